"""`musiclm-jax build-data NAME --data_dir OUT [--config C] [--manual_dir DIR]`.

Builds one of the project's TFDS datasets (`data/NAME`):
  audio_folder    from a folder of audio files (--manual_dir), configs 24khz, 16khz, ...
  music_captions  the captioned music set, rendered here; configs {tiny,small,large}_{16,24}khz
  musiccaps       the MusicCaps CSV + downloaded clips (--manual_dir); configs 16khz, 24khz
Same result as `tfds build data/NAME --data_dir=OUT --config=C [--manual_dir=DIR]`, whose
script in tensorflow-datasets 4.9 imports apache_beam at start-up (not a dependency here).
"""

from __future__ import annotations

import os
import sys

from musiclm_jax import cli_utils

NEEDS_MANUAL_DIR = {"audio_folder": True, "music_captions": False, "musiccaps": True}
DEFAULT_CONFIG = {"audio_folder": "24khz", "music_captions": "small_24khz",
                  "musiccaps": "16khz"}


def _check_every_file(builders, manual_dir: str) -> None:
  """--strict: reads every audio file the audio_folder build would read; the first unusable
  one raises AudioError naming it, before anything is written."""
  from musiclm_jax.audio import io as audio_io  # pylint: disable=g-import-not-at-top
  module = builders.builder_module("audio_folder")
  for rel in module.find_audio_files(manual_dir):
    audio_io.load_audio(os.path.join(manual_dir, rel))


def main(argv=None) -> None:
  parser = cli_utils.ArgumentParser(prog="musiclm-jax build-data",
                                    description=cli_utils.first_paragraph(__doc__))
  parser.add_argument("name", choices=sorted(NEEDS_MANUAL_DIR))
  parser.add_argument("--manual_dir", default=None, help="the folder of source files")
  parser.add_argument("--data_dir", required=True, help="TFDS data_dir to write into")
  parser.add_argument("--config", default=None,
                      help="builder config (default: " + ", ".join(
                          f"{k} {v}" for k, v in DEFAULT_CONFIG.items()) + ")")
  parser.add_argument("--strict", action="store_true",
                      help="audio_folder: check every file first and build nothing if any is "
                           "unusable (default: skip them; the build report names each)")
  args = parser.parse_args(argv)
  if NEEDS_MANUAL_DIR[args.name] and not args.manual_dir:
    parser.error(f"{args.name} needs --manual_dir (the folder of source files)")
  from musiclm_jax.tasks import builders  # pylint: disable=g-import-not-at-top
  config = args.config or DEFAULT_CONFIG[args.name]
  configs = [c.name for c in builders.builder_cls(args.name).BUILDER_CONFIGS]
  if config not in configs:
    parser.error(f"--config {config}: {args.name} has the configs {', '.join(configs)}")
  try:
    if args.strict and args.name == "audio_folder":
      _check_every_file(builders, args.manual_dir)
    builder = builders.build(args.name, args.data_dir, config, args.manual_dir)
  except (OSError, ValueError) as e:  # AudioError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)
  splits = {name: split.num_examples for name, split in builder.info.splits.items()}
  print(f"{args.name}/{config} in {builder.data_dir}: {splits}")


if __name__ == "__main__":
  main()
