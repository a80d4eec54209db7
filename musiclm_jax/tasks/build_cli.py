"""`musiclm-jax build-data NAME --data_dir OUT [--config C] [--manual_dir DIR]`.

Builds one of the project's TFDS datasets (`data/NAME`):
  audio_folder    from a folder of audio files (--manual_dir), configs 24khz, 16khz, ...
  music_captions  the captioned music set, rendered here; configs {tiny,small,large}_{16,24}khz
  musiccaps       the MusicCaps CSV + downloaded clips (--manual_dir); configs 16khz, 24khz
Same result as `tfds build data/NAME --data_dir=OUT --config=C [--manual_dir=DIR]`.
--beam_pipeline_options runs the build on Apache Beam (`pip install 'musiclm-jax[beam]'`),
with the same examples: e.g. `runner=DirectRunner,direct_num_workers=2,
direct_running_mode=multi_processing` on one machine, or a cluster runner's options
(docs/data.md).
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


def _quiet_workers(options):
  """Beam's worker processes log every start and stop at INFO: WARNING unless asked."""
  if options and "sdk_harness_log_level" not in options:
    options += ",default_sdk_harness_log_level=WARNING"
  return options


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
  parser.add_argument("--beam_pipeline_options", default=None,
                      help="build on Apache Beam with these comma-separated options, as "
                           "tfds build takes them (audio_folder, musiccaps), e.g. "
                           "runner=DirectRunner,direct_num_workers=2,"
                           "direct_running_mode=multi_processing")
  args = parser.parse_args(argv)
  if args.beam_pipeline_options and args.name == "music_captions":
    parser.error("--beam_pipeline_options: music_captions builds in one process only")
  if NEEDS_MANUAL_DIR[args.name] and not args.manual_dir:
    parser.error(f"{args.name} needs --manual_dir (the folder of source files)")
  from musiclm_jax.tasks import builders  # pylint: disable=g-import-not-at-top
  if args.beam_pipeline_options:
    from musiclm_jax import dataset_builds  # pylint: disable=g-import-not-at-top
    dataset_builds.quiet_beam_logs()
  config = args.config or DEFAULT_CONFIG[args.name]
  configs = [c.name for c in builders.builder_cls(args.name).BUILDER_CONFIGS]
  if config not in configs:
    parser.error(f"--config {config}: {args.name} has the configs {', '.join(configs)}")
  try:
    if args.strict and args.name == "audio_folder":
      _check_every_file(builders, args.manual_dir)
    builder = builders.build(args.name, args.data_dir, config, args.manual_dir,
                             _quiet_workers(args.beam_pipeline_options))
  except (OSError, ValueError, ImportError) as e:  # AudioError is a ValueError
    hint = ""
    if args.beam_pipeline_options and "examples is 0 for split" in str(e):
      hint = (" (on Beam every split with a share is declared before the files are listed: "
              "add files to it, or build without --beam_pipeline_options)")
    print(f"error: {e}{hint}", file=sys.stderr)
    raise SystemExit(2)
  splits = {name: split.num_examples for name, split in builder.info.splits.items()}
  print(f"{args.name}/{config} in {builder.data_dir}: {splits}")


if __name__ == "__main__":
  main()
