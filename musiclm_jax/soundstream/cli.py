"""`musiclm-jax codec ...`: audio files <-> SoundStream tokens, and bundle export.

  musiclm-jax codec encode IN.(wav|flac|ogg|mp3) OUT.npy --bundle DIR [--levels Q]
  musiclm-jax codec encode IN_FOLDER OUT_FOLDER --bundle DIR [--levels Q] [--strict]
  musiclm-jax codec decode IN.npy OUT.(wav|flac) --bundle DIR [--levels Q]
  musiclm-jax codec export --model_dir RUN OUT_BUNDLE [--step N] [--no_ema]

Input audio of any sample rate and channel count is down-mixed and resampled to the codec's
rate. Codes are saved as int32 [frames, levels] for one file.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from musiclm_jax import cli_utils


def _encode(args) -> None:
  from musiclm_jax.soundstream import codec as codec_lib
  codec = codec_lib.Codec.load(args.bundle)
  levels = cli_utils.check_levels(args.levels, codec.config.num_quantizers)
  if os.path.isdir(args.input):
    _encode_folder(args, codec, levels)
    return
  codes, seconds = _encode_file(codec, args.input, levels)
  cli_utils.save_npy(args.output, codes)
  print(f"{args.input}: {seconds:.2f} s -> codes {codes.shape} "
        f"({codec.config.bitrate(codes.shape[-1]) / 1000:.1f} kbps) -> {args.output}")


def _encode_file(codec, path: str, levels: int):
  """(int32 codes [frames, levels], seconds) of one audio file."""
  from musiclm_jax.audio import io as audio_io
  wave = audio_io.load_audio(path, sample_rate=codec.config.sample_rate)
  codes = codec.encode(wave[None], levels)[0].astype(np.int32)
  return codes, wave.shape[0] / codec.config.sample_rate


def _encode_folder(args, codec, levels: int) -> None:
  """Every audio file under args.input -> args.output/<relative path>.npy, written as one
  folder (complete or absent). Unusable files are skipped and listed, on the console and
  in args.output/skipped.json; --strict stops at the first."""
  import json
  from musiclm_jax import atomic
  from musiclm_jax.audio import io as audio_io
  if os.path.exists(args.output):
    raise FileExistsError(f"{args.output}: exists; encoding a folder writes a new one")
  skipped, count = [], 0
  with atomic.atomic_directory(args.output) as tmp:
    for path in cli_utils.audio_paths([args.input]):
      rel = os.path.relpath(path, args.input)
      try:
        codes, _ = _encode_file(codec, path, levels)
      except audio_io.AudioError as e:
        if args.strict:
          raise
        skipped.append({"file": rel, "reason": e.reason, "detail": str(e)})
        print(f"skipped: {e}")
        continue
      cli_utils.save_npy(os.path.join(tmp, rel + ".npy"), codes)
      count += 1
    if not count:
      raise ValueError(f"{args.input}: no usable audio file ({len(skipped)} skipped)")
    atomic.atomic_write_text(os.path.join(tmp, "skipped.json"), json.dumps(skipped, indent=1))
  print(f"{args.input}: {count} files -> codes in {args.output}; {len(skipped)} skipped "
        f"(listed in {os.path.join(args.output, 'skipped.json')})")


def _decode(args) -> None:
  from musiclm_jax.audio import io as audio_io
  from musiclm_jax.soundstream import codec as codec_lib
  codec = codec_lib.Codec.load(args.bundle)
  if not os.path.isfile(args.input):
    raise FileNotFoundError(f"{args.input}: no such file")
  try:
    codes = np.load(args.input, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:  # empty, truncated, or not an .npy at all
    raise ValueError(f"{args.input}: not a codes file written by `codec encode` (an int "
                     f".npy of [frames, levels]): {type(e).__name__}") from None
  if codes.ndim != 2 or codes.shape[0] < 1:
    raise ValueError(f"{args.input}: codes must be [frames >= 1, levels], got shape "
                     f"{codes.shape}")
  codes = codes[:, :cli_utils.check_levels(args.levels, codes.shape[1], args.input)]
  try:
    wave = codec.decode(codes[None])[0]
  except ValueError as e:  # integer ids within the codec's levels and codebook
    raise ValueError(f"{args.input}: {e}") from None
  audio_io.save_audio(args.output, wave, codec.config.sample_rate)
  print(f"{args.input}: codes {codes.shape} -> {wave.shape[0] / codec.config.sample_rate:.2f} "
        f"s -> {args.output}")


def _export(args) -> None:
  from musiclm_jax.training import runs
  from musiclm_jax.soundstream import codec as codec_lib
  from musiclm_jax.soundstream import model as model_lib
  run = runs.load_run(args.model_dir, model_lib.SoundStreamConfig, args.step,
                           not args.no_ema)
  config, step = run.config, run.step
  codec = codec_lib.Codec.from_train_state(config, run.params, run.flax_mutables)
  codec._check_shapes(os.path.join(args.model_dir, "config.gin"))  # pylint: disable=protected-access
  with open(os.path.join(args.model_dir, "config.gin"), encoding="utf-8") as f:
    gin_config = f.read()
  codec.provenance = {"trained_with": "musiclm-jax train", "model_dir": args.model_dir,
                      "step": int(step), "parameters": "raw" if args.no_ema else "EMA",
                      "gin_config": gin_config}
  codec.save(args.output)
  print(f"step {step} of {args.model_dir} -> codec bundle {args.output} "
        f"({config.bitrate() / 1000:.1f} kbps at {config.num_quantizers} levels)")


def parser() -> argparse.ArgumentParser:
  p = cli_utils.ArgumentParser(prog="musiclm-jax codec",
                               description=cli_utils.first_paragraph(__doc__))
  sub = p.add_subparsers(dest="command", required=True)
  enc = sub.add_parser("encode", help="audio file -> codes .npy; folder -> folder of them")
  enc.add_argument("input", help="an audio file, or a folder of them")
  enc.add_argument("output", type=cli_utils.output_path,
                   help="the .npy, or a new folder for a folder's codes")
  enc.add_argument("--bundle", required=True, help="codec bundle folder (codec export)")
  enc.add_argument("--levels", type=cli_utils.positive_int, default=None,
                   help="keep the first Q levels (default all)")
  enc.add_argument("--strict", action="store_true",
                   help="folder: stop at the first unusable file (default: skip and list)")
  enc.set_defaults(run=_encode)
  dec = sub.add_parser("decode", help="codes .npy -> audio file")
  dec.add_argument("input")
  dec.add_argument("output", type=cli_utils.output_path)
  dec.add_argument("--bundle", required=True, help="codec bundle folder (codec export)")
  dec.add_argument("--levels", type=cli_utils.positive_int, default=None,
                   help="decode the first Q levels of the file (default all)")
  dec.set_defaults(run=_decode)
  exp = sub.add_parser("export", help="training run checkpoint -> codec bundle")
  exp.add_argument("--model_dir", required=True)
  exp.add_argument("output", type=cli_utils.output_path)
  exp.add_argument("--step", type=int, default=None)
  exp.add_argument("--no_ema", action="store_true", help="export raw, not EMA, params")
  exp.set_defaults(run=_export)
  return p


def main(argv=None) -> None:
  cli_utils.run(parser(), argv)


if __name__ == "__main__":
  main()
