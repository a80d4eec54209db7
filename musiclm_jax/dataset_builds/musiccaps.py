"""`musiccaps`'s work: the public MusicCaps CSV's rows joined with downloaded clips.

Each row is a source: `process_row` turns (row, audio path) into its example and one
`RowOutcome`; `BuildReport` adds outcomes in any order. The one-process build and the Beam
build (`dataset_builds.beam`) run the same functions.
"""

from __future__ import annotations

import ast
import collections
import csv
import dataclasses
import os
from typing import Dict, Iterator, List, Optional, Union

import numpy as np

from musiclm_jax.audio import io as audio_io

CSV_NAME = "musiccaps-public.csv"
REQUIRED_COLUMNS = ("ytid", "start_s", "end_s", "aspect_list", "caption",
                    "is_balanced_subset", "is_audioset_eval")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
SPLITS = ("train", "test", "balanced_1k")
LENGTH_TOLERANCE_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class Row:
  ytid: str
  start_s: float
  end_s: float
  caption: str
  aspects: str
  balanced: bool
  audioset_eval: bool


def _flag(value: str, where: str) -> bool:
  text = value.strip().lower()
  if text not in ("true", "false", "1", "0"):
    raise ValueError(f"{where}: expected True or False, got {value!r}")
  return text in ("true", "1")


def read_csv(path: str) -> List[Row]:
  """The CSV's rows; ValueError naming the file and line for anything malformed."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: put the public MusicCaps CSV "
                            f"({CSV_NAME}) in the manual dir")
  rows = []
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{path}: missing columns {missing} (have {reader.fieldnames})")
    for record in reader:
      where = f"{path}:{reader.line_num}"
      try:
        start, end = float(record["start_s"]), float(record["end_s"])
      except ValueError as e:
        raise ValueError(f"{where}: start_s/end_s are not numbers ({e})") from e
      if not 0 <= start < end:
        raise ValueError(f"{where}: need 0 <= start_s < end_s, got {start}, {end}")
      aspects = record["aspect_list"] or "[]"
      try:
        parsed = ast.literal_eval(aspects)
        aspects = ", ".join(str(a) for a in parsed) if isinstance(parsed, list) else aspects
      except (ValueError, SyntaxError):
        pass  # keep the text as written
      rows.append(Row(record["ytid"].strip(), start, end, (record["caption"] or "").strip(),
                      aspects, _flag(record["is_balanced_subset"], where),
                      _flag(record["is_audioset_eval"], where)))
  return rows


def find_clips(root: str) -> Dict[str, str]:
  """ytid -> audio path for the files below root named '<ytid>.ext' / '<ytid>_*' /
  '<ytid>-*' (YouTube ids are 11 characters)."""
  found = {}
  for directory, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if ext.lower() in AUDIO_EXTENSIONS and len(stem) >= 11:
        ytid = stem if len(stem) == 11 else stem[:11]
        if len(stem) == 11 or stem[11] in "_-":
          found.setdefault(ytid, os.path.join(directory, name))
  return found


def clip_audio(path: str, row: Row, sample_rate: int) -> np.ndarray:
  """The row's 10 s clip from its file: the file itself when it lasts end_s - start_s
  (give or take a second), else [start_s, end_s) of it. AudioError otherwise."""
  wave = audio_io.load_audio(path, sample_rate=sample_rate)
  seconds = wave.shape[0] / sample_rate
  length = row.end_s - row.start_s
  if abs(seconds - length) <= LENGTH_TOLERANCE_SECONDS:
    clip = wave[:int(round(length * sample_rate))]
  elif seconds >= row.end_s - LENGTH_TOLERANCE_SECONDS:
    clip = wave[int(round(row.start_s * sample_rate)):int(round(row.end_s * sample_rate))]
  else:
    raise audio_io.AudioError(path, "length_mismatch",
                              f"{seconds:.2f} s is neither the {length:g} s clip nor a "
                              f"recording reaching end_s={row.end_s:g}")
  audio_io.check_audio(clip, sample_rate, path)
  return clip


@dataclasses.dataclass(frozen=True)
class RowOutcome:
  """What became of one row in one split: written, or skipped with the reason."""
  split: str
  reason: Optional[str] = None
  message: str = ""

  def counters(self) -> dict[str, int]:
    if self.reason is None:
      return {f"written_{self.split}": 1}
    # balanced_1k's rows are also in train or test: their skips are counted there
    return {} if self.split == "balanced_1k" else {f"skipped_{self.reason}": 1}


def split_rows(rows: List[Row]) -> Dict[str, List[Row]]:
  """The paper's splits: train (not AudioSet eval), test (AudioSet eval), balanced_1k."""
  return {"train": [r for r in rows if not r.audioset_eval],
          "test": [r for r in rows if r.audioset_eval],
          "balanced_1k": [r for r in rows if r.balanced]}


def process_row(source: tuple, split: str, sample_rate: int
                ) -> Iterator[Union[tuple, RowOutcome]]:
  """(row, audio path or None) -> its (key, features), then its RowOutcome."""
  row, path = source
  try:
    if path is None:
      raise audio_io.AudioError(row.ytid, "missing", "no audio file with this id")
    audio = clip_audio(path, row, sample_rate)
  except audio_io.AudioError as e:
    yield RowOutcome(split, e.reason, str(e))
    return
  key = f"{row.ytid}:{row.start_s:g}"
  yield key, {"audio": audio, "sample_rate": sample_rate, "caption": row.caption,
              "aspect_list": row.aspects, "id": key, "ytid": row.ytid,
              "start_s": row.start_s, "end_s": row.end_s,
              "is_balanced_subset": row.balanced, "is_audioset_eval": row.audioset_eval}
  yield RowOutcome(split)


class BuildReport:
  """Rows written per split and skipped per reason (every one named), mergeable."""

  def __init__(self):
    self.written = collections.Counter()
    self.skipped = collections.defaultdict(list)

  def add(self, outcome: RowOutcome) -> "BuildReport":
    if outcome.reason is None:
      self.written[outcome.split] += 1
    elif outcome.split != "balanced_1k":
      self.skipped[outcome.reason].append(outcome.message)
    return self

  def merge(self, other: "BuildReport") -> "BuildReport":
    self.written.update(other.written)
    for reason, messages in other.skipped.items():
      self.skipped[reason].extend(messages)
    return self

  def as_dict(self, rows: int) -> dict:
    return {"rows": rows, "written": dict(self.written),
            "skipped": {k: len(v) for k, v in sorted(self.skipped.items())},
            "skipped_examples": {k: sorted(v) for k, v in sorted(self.skipped.items())}}
