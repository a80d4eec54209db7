"""`musiclm-jax build-data NAME --manual_dir DIR --data_dir OUT [--config C]`.

Builds one of the project's TFDS datasets (`data/NAME`) from local files. Same result as
`tfds build data/NAME --manual_dir=DIR --data_dir=OUT --config=C`, whose script in
tensorflow-datasets 4.9 imports apache_beam at start-up (not a dependency here).
"""

from __future__ import annotations

import argparse
import sys

BUILDERS = ("audio_folder",)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="musiclm-jax build-data",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("name", choices=BUILDERS)
  parser.add_argument("--manual_dir", required=True, help="the folder of source files")
  parser.add_argument("--data_dir", required=True, help="TFDS data_dir to write into")
  parser.add_argument("--config", default="24khz", help="builder config (e.g. 24khz, 16khz)")
  args = parser.parse_args(argv)
  from musiclm_jax.tasks import audio  # pylint: disable=g-import-not-at-top
  try:
    builder = audio.build_audio_folder(args.manual_dir, args.data_dir, args.config)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)
  splits = {name: split.num_examples for name, split in builder.info.splits.items()}
  print(f"{args.name}/{args.config} in {builder.data_dir}: {splits}")


if __name__ == "__main__":
  main()
