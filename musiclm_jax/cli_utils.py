"""Shared plumbing of the argparse sub-commands (`musiclm-jax codec|semantic|...`)."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


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
  """np.save through a temporary name, so a crash leaves no half-written file."""
  tmp = f"{path}.tmp-{os.getpid()}.npy"
  np.save(tmp, array)
  os.replace(tmp, path)
