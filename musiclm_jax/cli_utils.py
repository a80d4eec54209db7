"""Shared plumbing of the argparse sub-commands (`musiclm-jax codec|semantic|...`)."""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

from musiclm_jax import atomic


class ArgumentParser(argparse.ArgumentParser):
  """argparse with a one-line error: `error: PROG: MESSAGE (PROG --help lists the flags)`,
  exit status 2. Sub-command parsers inherit it."""

  def error(self, message):
    self.exit(2, f"error: {self.prog}: {message} ({self.prog} --help lists the flags)\n")


def first_paragraph(doc: str) -> str:
  """A module docstring's first paragraph as one line: a command's --help description."""
  return " ".join(doc.strip().split("\n\n")[0].split())


def run(parser: argparse.ArgumentParser, argv=None) -> None:
  """Parses argv and runs the chosen sub-command; bad input exits 2 with the message."""
  args = parser.parse_args(argv)
  from musiclm_jax.audio import io as audio_io  # pylint: disable=g-import-not-at-top
  try:
    args.run(args)
  except (audio_io.AudioError, ValueError, OSError) as e:  # OSError: names its path
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1 (argparse reports anything else in one line)."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value} is not >= 1")
  return value


def output_path(text: str) -> str:
  """argparse type for a file or folder a command will write: its nearest existing folder
  must be writable, so a bad --out fails at once, not after the work."""
  path = os.path.abspath(text)
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise argparse.ArgumentTypeError(f"{text}: cannot write there ({parent} is not a "
                                     "writable folder)")
  return text


def check_levels(levels, available: int, source: str = "the codec") -> int:
  """The number of RVQ levels to use: `levels` (None: all) within 1..available, the levels
  `source` has."""
  if levels is None:
    return available
  if not 1 <= levels <= available:
    raise ValueError(f"--levels {levels}: {source} has {available} levels (give 1 to "
                     f"{available})")
  return levels


def save_npy(path: str, array: np.ndarray) -> None:
  """np.save, atomically (nothing half-written, no temporary left on any failure)."""
  with atomic.atomic_file(path, suffix=".npy") as tmp:
    np.save(tmp, array)


def audio_paths(inputs) -> list:
  """Files, and the entries with an audio extension under folders (recursively), in order;
  errors name the missing path. Entries that are not readable files (a dangling link, a
  folder named like a file) are kept, so the reader names them with its reason instead of
  their vanishing from the count."""
  from musiclm_jax.audio import debian_music  # pylint: disable=g-import-not-at-top
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      paths += sorted(p for p in glob.glob(os.path.join(item, "**", "*"), recursive=True)
                      if p.lower().endswith(debian_music.AUDIO_EXTENSIONS))
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
