"""`audio_folder`'s work: list a folder tree's audio files, cut each into clips, report.

Everything here is a function of one file (or one listing unit), so the one-process build
and the Beam build (`dataset_builds.beam`) run the same code and give the same examples:

  listing    the manual dir's top-level folders are listed independently (each a *listing
             unit*; the files at the top are one more), or, when the dir holds `files.txt`,
             its lines are the file list (10^7 files need no os.walk at all)
  split      `split_for`: a hash of the relative path, so a file's split never moves
  caption    `caption_for`: NAME.json, else NAME.txt, else the row of captions.csv
  clips      `process_file`: decode + resample (`audio.io.load_audio`), `cut_clips`, check
             each clip; yields the examples, then one `FileOutcome`
  report     `BuildReport`: FileOutcomes added in any order and merged across workers give
             the same report (sorted lists, sums)
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import os
import posixpath
import unicodedata
from typing import Iterator, Optional, Union

import numpy as np

from musiclm_jax.audio import debian_music
from musiclm_jax.audio import io as audio_io

AUDIO_EXTENSIONS = debian_music.AUDIO_EXTENSIONS
CAPTIONS_CSV = "captions.csv"
FILE_LIST = "files.txt"
SPLITS = ("train", "validation", "test")
TOP_LEVEL = ""  # the listing unit of the files directly in the manual dir
CLIP_EXAMPLES_PER_REASON = 3  # dropped clips named in the report (files: every one)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What clips a build makes: the fields of a builder config that the work needs, in a
  type that Beam workers can unpickle (they import this module, not the builder's)."""
  name: str
  sample_rate: int
  clip_seconds: float
  min_clip_seconds: float
  validation_percent: float
  test_percent: float

  @property
  def clip_samples(self) -> int:
    return int(round(self.clip_seconds * self.sample_rate))

  @property
  def min_clip_samples(self) -> int:
    return int(round(self.min_clip_seconds * self.sample_rate))

  def split_of(self, relpath: str) -> str:
    return split_for(relpath, self.validation_percent, self.test_percent)


def split_for(relpath: str, validation_percent: float, test_percent: float) -> str:
  """'train', 'validation' or 'test' for a file, from a hash of its relative path alone."""
  key = unicodedata.normalize("NFC", relpath.replace(os.sep, "/"))
  bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 10000
  if bucket < validation_percent * 100:
    return "validation"
  if bucket < (validation_percent + test_percent) * 100:
    return "test"
  return "train"


def _is_audio(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS)


def listing_units(root: str) -> list[str]:
  """The independent parts of the folder's listing: TOP_LEVEL and each visible top-level
  folder (links to folders included), sorted. Only the top level is read here."""
  with os.scandir(root) as entries:
    folders = [e.name for e in entries
               if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)]
  return [TOP_LEVEL] + sorted(folders)


def list_unit(root: str, unit: str) -> list[str]:
  """Relative paths ('/'-separated, sorted) of the audio files of one listing unit; hidden
  files and folders ignored, symlink loops cut."""
  if unit == TOP_LEVEL:
    with os.scandir(root) as entries:
      return sorted(e.name for e in entries if _is_audio(e.name) and not e.is_dir())
  found, seen = [], set()
  for directory, subdirs, names in os.walk(os.path.join(root, unit), followlinks=True):
    real = os.path.realpath(directory)
    if real in seen:  # a symlink loop, or a folder linked twice within the unit
      subdirs[:] = []
      continue
    seen.add(real)
    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    found += [os.path.relpath(os.path.join(directory, n), root).replace(os.sep, "/")
              for n in names if _is_audio(n)]
  return sorted(found)


def file_list_entry(line: str) -> Optional[str]:
  """One line of files.txt -> the relative path it names, or None (blank, a comment, not
  audio). `find . -name '*.flac' > files.txt` output works as it is."""
  path = line.strip()
  if not path or path.startswith("#"):
    return None
  path = posixpath.normpath(path.replace("\\", "/"))
  if path.startswith("/") or path.startswith("../"):
    raise ValueError(f"{FILE_LIST}: {line.strip()!r} must be a path inside the folder")
  return path if _is_audio(posixpath.basename(path)) else None


def find_audio_files(root: str) -> list[str]:
  """Relative paths of every audio file of the folder (files.txt's, or the listing units'),
  sorted. The one-process build's listing; Beam lists per unit on the workers."""
  list_path = os.path.join(root, FILE_LIST)
  if os.path.isfile(list_path):
    with open(list_path, encoding="utf-8") as f:
      return sorted({p for p in map(file_list_entry, f) if p is not None})
  return sorted(rel for unit in listing_units(root) for rel in list_unit(root, unit))


def read_captions_csv(path: str) -> dict[str, str]:
  """captions.csv -> {relpath: caption}. Raises ValueError naming the file and row."""
  with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: tolerate a BOM
    reader = csv.DictReader(f)
    columns = reader.fieldnames or []
    if "path" not in columns or "caption" not in columns:
      raise ValueError(f"{path}: needs the columns 'path' and 'caption', found {columns}")
    out, rows = {}, {}
    for row in reader:
      raw = (row["path"] or "").strip().replace("\\", "/")
      if not raw or raw.startswith("/"):
        raise ValueError(f"{path}, line {reader.line_num}: path {raw!r} must be relative "
                         "to the folder")
      rel = posixpath.normpath(raw)
      caption = (row["caption"] or "").strip()
      if rel in out and out[rel] != caption:
        raise ValueError(f"{path}, line {reader.line_num}: {rel!r} already has another "
                         f"caption on line {rows[rel]}")
      out[rel], rows[rel] = caption, reader.line_num
  return out


def root_captions(root: str) -> dict[str, str]:
  """The folder's captions.csv as {relpath: caption}; {} when it has none."""
  path = os.path.join(root, CAPTIONS_CSV)
  return read_captions_csv(path) if os.path.isfile(path) else {}


def read_sidecar(path: str) -> str:
  """The caption in NAME.json ({"caption": ...}) or NAME.txt. Raises ValueError naming it."""
  with open(path, encoding="utf-8-sig") as f:
    text = f.read()
  if not path.endswith(".json"):
    return text.strip()
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(value, dict) or not isinstance(value.get("caption"), str):
    raise ValueError(f'{path}: expected {{"caption": "..."}}, got {text[:80]!r}')
  return value["caption"].strip()


def caption_for(root: str, rel: str, from_csv: dict[str, str]) -> tuple[str, Optional[str]]:
  """(caption, where it came from: 'json' | 'txt' | 'csv' | None) for one file."""
  stem = os.path.splitext(os.path.join(root, rel))[0]
  for ext in (".json", ".txt"):
    if os.path.isfile(stem + ext):
      caption = read_sidecar(stem + ext)
      return caption, (ext[1:] if caption else None)
  caption = from_csv.get(rel, "")
  return caption, ("csv" if caption else None)


def cut_clips(wave: np.ndarray, clip_samples: int, min_clip_samples: int):
  """[time] -> [(clip_index, clip [<= clip_samples])], consecutive; the short tail dropped."""
  return [(i, wave[start:start + clip_samples])
          for i, start in enumerate(range(0, wave.shape[0], clip_samples))
          if wave.shape[0] - start >= min_clip_samples]


@dataclasses.dataclass(frozen=True)
class FileOutcome:
  """What became of one listed file (the report is built from these alone).

  reason/message: why the file was skipped (None when used); clips/seconds: what it gave;
  short_clip: the length in samples of its clip shorter than clip_seconds, if any;
  dropped: (reason, message) of each clip left out of a used file.
  """
  rel: str
  split: str
  reason: Optional[str] = None
  message: str = ""
  clips: int = 0
  seconds: float = 0.0
  caption_source: Optional[str] = None
  short_clip: Optional[int] = None
  dropped: tuple = ()

  def counters(self) -> dict[str, int]:
    """Beam counter increments of this file."""
    if self.reason:
      out = {"files_skipped": 1, f"files_skipped_{self.reason}": 1}
    else:
      out = {"files_used": 1, f"clips_{self.split}": self.clips}
    for reason, _ in self.dropped:
      out[f"clips_dropped_{reason}"] = out.get(f"clips_dropped_{reason}", 0) + 1
    return out


def process_file(root: str, rel: str, split: str, config: ClipSpec, caption: str,
                 caption_source: Optional[str]) -> Iterator[Union[tuple, FileOutcome]]:
  """One file -> its examples (key, features), then its FileOutcome."""
  rate = config.sample_rate
  try:
    wave = audio_io.load_audio(os.path.join(root, rel), sample_rate=rate,
                               min_seconds=config.min_clip_seconds)
  except audio_io.AudioError as e:
    yield FileOutcome(rel, split, e.reason, str(e), caption_source=caption_source)
    return
  kept, seconds, short, dropped = 0, 0.0, None, []
  for index, clip in cut_clips(wave, config.clip_samples, config.min_clip_samples):
    key = f"{rel}:{index}"
    try:
      audio_io.check_audio(clip, rate, key)
    except audio_io.AudioError as e:  # e.g. a silent stretch
      dropped.append((e.reason, str(e)))
      continue
    kept += 1
    seconds += clip.shape[0] / rate
    if clip.shape[0] < config.clip_samples:
      short = int(clip.shape[0])
    yield key, {"audio": clip, "caption": caption, "id": key, "file": rel,
                "sample_rate": rate}
  tail = wave.shape[0] % config.clip_samples
  if 0 < tail < config.min_clip_samples:
    dropped.append(("too_short", str(audio_io.AudioError(
        f"{rel}:{wave.shape[0] // config.clip_samples}", "too_short",
        f"tail of {tail / rate:.2f} s < {config.min_clip_seconds} s"))))
  if kept:
    yield FileOutcome(rel, split, clips=kept, seconds=seconds, caption_source=caption_source,
                      short_clip=short, dropped=tuple(dropped))
  else:  # no usable clip (e.g. near-silence that resampling took below the threshold)
    error = audio_io.AudioError(os.path.join(root, rel), dropped[0][0], "no usable clip: "
                                + "; ".join(m for _, m in dropped[:3]))
    yield FileOutcome(rel, split, error.reason, str(error), caption_source=caption_source)


class BuildReport:
  """The build's counts from FileOutcomes; `merge` combines the reports of Beam workers.
  Lists are kept sorted, so the result does not depend on the order files were seen."""

  def __init__(self):
    self.files_found = 0
    self.files = collections.Counter()           # used files per split
    self.clips = collections.Counter()
    self.seconds = collections.Counter()
    self.captioned_clips = collections.Counter()
    self.caption_sources = collections.Counter()
    self.short_clip_samples = collections.defaultdict(list)
    self.file_skips = collections.defaultdict(list)   # reason -> every message
    self.clip_skip_counts = collections.Counter()
    self.clip_skip_examples = collections.defaultdict(list)  # reason -> the first few
    self.splits_listed = set()

  def add(self, outcome: FileOutcome) -> "BuildReport":
    self.files_found += 1
    self.splits_listed.add(outcome.split)
    if outcome.caption_source:
      self.caption_sources[outcome.caption_source] += 1
    if outcome.reason:
      self.file_skips[outcome.reason].append(outcome.message)
      return self
    split = outcome.split
    self.files[split] += 1
    self.clips[split] += outcome.clips
    self.seconds[split] += outcome.seconds
    self.captioned_clips[split] += outcome.clips if outcome.caption_source else 0
    if outcome.short_clip is not None:
      self.short_clip_samples[split].append(outcome.short_clip)
    for reason, message in outcome.dropped:
      self.clip_skip_counts[reason] += 1
      self.clip_skip_examples[reason].append(message)
    self._trim()
    return self

  def merge(self, other: "BuildReport") -> "BuildReport":
    self.files_found += other.files_found
    self.splits_listed |= other.splits_listed
    for mine, theirs in ((self.files, other.files), (self.clips, other.clips),
                         (self.seconds, other.seconds),
                         (self.captioned_clips, other.captioned_clips),
                         (self.caption_sources, other.caption_sources),
                         (self.clip_skip_counts, other.clip_skip_counts)):
      mine.update(theirs)
    for mine, theirs in ((self.short_clip_samples, other.short_clip_samples),
                         (self.file_skips, other.file_skips),
                         (self.clip_skip_examples, other.clip_skip_examples)):
      for key, values in theirs.items():
        mine[key].extend(values)
    self._trim()
    return self

  def _trim(self) -> None:
    for reason, messages in self.clip_skip_examples.items():
      self.clip_skip_examples[reason] = sorted(messages)[:CLIP_EXAMPLES_PER_REASON]

  def as_dict(self, root: str, config: ClipSpec, csv_unmatched: list[str]) -> dict:
    """The report stored as info.metadata['build_report']."""
    return {
        "manual_dir": root, "config": config.name, "sample_rate": config.sample_rate,
        "clip_seconds": config.clip_seconds, "min_clip_seconds": config.min_clip_seconds,
        "files_found": self.files_found, "files_used": sum(self.files.values()),
        "files_skipped": {k: len(v) for k, v in sorted(self.file_skips.items())},
        "files_skipped_examples": {k: sorted(v) for k, v in sorted(self.file_skips.items())},
        "clips_dropped": dict(sorted(self.clip_skip_counts.items())),
        "clips_dropped_examples": dict(sorted(self.clip_skip_examples.items())),
        "files": dict(self.files), "clips": dict(self.clips),
        "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        "captioned_clips": dict(self.captioned_clips),
        "captions": {**{k: self.caption_sources[k] for k in ("json", "txt", "csv")},
                     "csv_unmatched": sorted(csv_unmatched)},
        # Lengths of the clips shorter than clip_seconds (at most one per file): how many
        # clips a crop of n samples drops is known without reading the data.
        "short_clip_samples": {k: sorted(v) for k, v in self.short_clip_samples.items()},
        "splits_without_files": [s for s in SPLITS if s not in self.splits_listed],
    }


def format_report(r: dict) -> str:
  """The report as the lines printed at the end of a build."""
  skipped = sum(r["files_skipped"].values())
  reasons = ", ".join(f"{k}: {v}" for k, v in r["files_skipped"].items())
  lines = [f"\naudio_folder/{r['config']} from {r['manual_dir']}: {r['files_found']} audio "
           f"files, {r['files_used']} used; skipped {skipped}"
           + (f" ({reasons})" if reasons else "")]
  for reason, examples in r["files_skipped_examples"].items():
    lines += [f"  {reason}: {e}" for e in examples]
  for split in SPLITS:
    if split in r["clips"]:
      lines.append(f"  {split}: {r['files'][split]} files, {r['clips'][split]} clips, "
                   f"{r['seconds'][split]:.1f} s at {r['sample_rate']} Hz, "
                   f"{r['captioned_clips'][split]} clips captioned")
  dropped = ", ".join(f"{k}: {v}" for k, v in r["clips_dropped"].items()) or "none"
  lines.append(f"  clips dropped: {dropped}")
  caps = r["captions"]
  lines.append(f"  captions from .json: {caps['json']}, .txt: {caps['txt']}, "
               f"{CAPTIONS_CSV}: {caps['csv']}")
  if caps["csv_unmatched"]:
    lines.append(f"  {CAPTIONS_CSV} rows naming no audio file: "
                 f"{len(caps['csv_unmatched'])}, e.g. {caps['csv_unmatched'][:3]}")
  if r["splits_without_files"]:
    lines.append(f"  splits left out (no file hashes into them): "
                 f"{r['splits_without_files']}")
  if r.get("beam_counters"):
    lines.append("  Beam counters: " + ", ".join(
        f"{k}={v}" for k, v in sorted(r["beam_counters"].items())))
  return "\n".join(lines)
