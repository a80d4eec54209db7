"""Shared plumbing of the argparse sub-commands (`musiclm-jax codec|semantic|...`)."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from musiclm_jax import atomic


def run(parser: argparse.ArgumentParser, argv=None) -> None:
  """Parses argv and runs the chosen sub-command; bad input exits 2 with the message."""
  args = parser.parse_args(argv)
  from musiclm_jax.audio import io as audio_io  # pylint: disable=g-import-not-at-top
  try:
    args.run(args)
  except (audio_io.AudioError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)


def save_npy(path: str, array: np.ndarray) -> None:
  """np.save, atomically (nothing half-written, no temporary left on any failure)."""
  with atomic.atomic_file(path, suffix=".npy") as tmp:
    np.save(tmp, array)


def audio_paths(inputs) -> list:
  """Files, and the audio files under folders (recursively), in order; errors name the
  missing path."""
  from musiclm_jax.audio import debian_music  # pylint: disable=g-import-not-at-top
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      paths += debian_music.audio_files(item)
    elif os.path.isfile(item):
      paths.append(item)
    else:
      raise FileNotFoundError(f"{item}: no such file or folder")
  if not paths:
    raise ValueError(f"no audio files in {list(inputs)}")
  return paths


def add_run_arguments(parser: argparse.ArgumentParser, what: str) -> argparse.ArgumentParser:
  """--model_dir (a training run of `what`), --step, --no_ema: which params to load."""
  parser.add_argument("--model_dir", required=True, help=f"{what} training run")
  parser.add_argument("--step", type=int, default=None,
                      help="checkpoint step (default newest)")
  parser.add_argument("--no_ema", action="store_true", help="raw params even if EMA is saved")
  return parser
