"""`audio_folder`: any folder tree of audio files as clips at one sample rate.

Why a prepared dataset rather than reading the folder during training: decoding
(OGG/MP3/FLAC) and band-limited resampling cost far more than reading raw float32, and a
reader over the folder would pay them again every epoch on every host. Here they are paid
once: each file goes through `musiclm_jax.audio.io.load_audio` (mono, resampled to the
config's rate), is cut into clips of `clip_seconds`, and lands in TFRecord shards that any
number of hosts can read in parallel (SeqIO tasks over it: musiclm_jax/tasks/audio.py).

  tfds build data/audio_folder --config=24khz --manual_dir=/music --data_dir=~/tfds/music
  tfds.load('audio_folder/24khz', data_dir='~/tfds/music', split='train')

Without --config, `tfds build` builds every config in CONFIGS. The manual dir is not part
of the dataset's name: give each folder its own --data_dir.

Input (the manual dir): any tree of audio files (`AUDIO_EXTENSIONS`; hidden files and
folders are ignored). Captions are optional; per file, the first found wins:
  NAME.json beside NAME.flac   {"caption": "..."}
  NAME.txt beside NAME.flac    the whole text
  captions.csv at the root     columns `path,caption`; path relative to the root
Caption files are read and checked before any audio is decoded, so a malformed one fails
the build at once, naming the file.

Clips: a file is cut into consecutive clips of `clip_seconds`; the tail is kept when it
has at least `min_clip_seconds` (so clips have up to clip_seconds * sample_rate samples).
Clip i of `a/b.flac` has the id `a/b.flac:i` and starts at i * clip_seconds.

Splits: by a hash of the file's relative path (`split_for`), so a file's split never moves
when files are added or removed, and all clips of a file share its split (no overlapping
audio across train and test). A split that no file hashes into is left out; one whose files
are all unusable stops the build with an error naming them (TFDS cannot write an empty
split; the held-out splits are written first, so that comes early).

Unusable files (`AudioError`: unreadable, empty, non_finite, silent, too_short) are skipped
and counted, and so are unusable clips of the files kept (silent stretches, short tails); a
file none of whose clips is usable counts as a skipped file. The build never stops for a
bad file, and files_found = files_used + the files skipped. The counts are printed at the
end of the build and kept with the data as `builder.info.metadata['build_report']`
(metadata.json beside the TFRecords).

Features (per clip):
  audio        float32 [samples], mono, in [-1, 1]; samples <= clip_seconds * sample_rate
  caption      string, '' when the file has none
  id           string 'relpath:clip_index', unique
  file         string, the source file relative to the manual dir
  sample_rate  int32 scalar, the config's rate

`audio` is a `tfds.features.Audio` (float32): stored as the same raw float list as a plain
`Tensor` would be, but the rate is part of the feature spec
(`info.features['audio'].sample_rate`), so a reader can check it before reading an example.
It is not compressed: tfds 4.9's Audio ignores `encoding=` for arrays, and parsing raw
floats costs far less than the decoding this dataset exists to avoid.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import os
import posixpath
import unicodedata
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from musiclm_jax.audio import debian_music
from musiclm_jax.audio import io as audio_io

AUDIO_EXTENSIONS = debian_music.AUDIO_EXTENSIONS
CAPTIONS_CSV = "captions.csv"
SPLITS = ("train", "validation", "test")
# Files decoded at once, in threads (libsndfile and soxr do the work in C); also bounds
# memory to this many decoded files in flight.
DECODE_THREADS = min(8, os.cpu_count() or 1)


@dataclasses.dataclass(eq=False)
class AudioFolderConfig(tfds.core.BuilderConfig):
  """What clips to make.

  Attributes:
    sample_rate: output rate in Hz (files are resampled to it).
    clip_seconds: clip length; longer files give several clips.
    min_clip_seconds: shorter files are skipped ('too_short'); shorter tails are dropped.
    validation_percent / test_percent: share of files (by path hash) in those splits.
  """
  sample_rate: int = 24000
  clip_seconds: float = 10.0
  min_clip_seconds: float = 1.0
  validation_percent: float = 5.0
  test_percent: float = 5.0

  def __post_init__(self):
    problems = []
    if self.sample_rate <= 0:
      problems.append(f"sample_rate={self.sample_rate} must be > 0")
    if not 0 < self.min_clip_seconds <= self.clip_seconds:
      problems.append(f"need 0 < min_clip_seconds={self.min_clip_seconds} <= "
                      f"clip_seconds={self.clip_seconds}")
    if (min(self.validation_percent, self.test_percent) < 0
        or self.validation_percent + self.test_percent >= 100):
      problems.append(f"validation_percent={self.validation_percent} and test_percent="
                      f"{self.test_percent} must be >= 0 and leave some train files")
    if problems:
      raise ValueError(f"audio_folder config {self.name!r}: {'; '.join(problems)}")

  @property
  def clip_samples(self) -> int:
    return int(round(self.clip_seconds * self.sample_rate))

  @property
  def min_clip_samples(self) -> int:
    return int(round(self.min_clip_seconds * self.sample_rate))


# The configs, as data: a new rate or clip length is a new line. 10 s clips bound an
# example to ~1 MB and cover the longest crop the codec and the 10 s acoustic windows need;
# the 2 s ones (with larger held-out shares, so a dozen files fill every split) are for
# tests and tiny runs.
CONFIGS = {
    "24khz": dict(sample_rate=24000, clip_seconds=10.0, min_clip_seconds=1.0,
                  description="24 kHz mono clips of up to 10 s (SoundStream)."),
    "16khz": dict(sample_rate=16000, clip_seconds=10.0, min_clip_seconds=1.0,
                  description="16 kHz mono clips of up to 10 s (w2v-BERT, MuLan)."),
    "24khz_2s": dict(sample_rate=24000, clip_seconds=2.0, min_clip_seconds=0.5,
                     validation_percent=20.0, test_percent=20.0,
                     description="24 kHz mono clips of up to 2 s (tests, tiny runs)."),
    "16khz_2s": dict(sample_rate=16000, clip_seconds=2.0, min_clip_seconds=0.5,
                     validation_percent=20.0, test_percent=20.0,
                     description="16 kHz mono clips of up to 2 s (tests, tiny runs)."),
}


def split_for(relpath: str, validation_percent: float, test_percent: float) -> str:
  """'train', 'validation' or 'test' for a file, from a hash of its relative path alone."""
  key = unicodedata.normalize("NFC", relpath.replace(os.sep, "/"))
  bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 10000
  if bucket < validation_percent * 100:
    return "validation"
  if bucket < (validation_percent + test_percent) * 100:
    return "test"
  return "train"


def find_audio_files(root: str) -> list[str]:
  """Relative paths ('/'-separated, sorted) of the audio files under root; hidden ignored."""
  found, seen = [], set()
  for directory, subdirs, names in os.walk(root, followlinks=True):
    real = os.path.realpath(directory)
    if real in seen:  # a symlink loop, or a folder linked twice
      subdirs[:] = []
      continue
    seen.add(real)
    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    for name in names:
      if not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS):
        rel = os.path.relpath(os.path.join(directory, name), root)
        found.append(rel.replace(os.sep, "/"))
  return sorted(found)


def _read_captions_csv(path: str) -> dict[str, str]:
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


def _read_sidecar(path: str) -> str:
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


def read_captions(root: str, relpaths: list[str]) -> tuple[dict[str, str], dict]:
  """{relpath: caption} for the files that have one, and where captions came from.

  Returns the captions and stats {'json': n, 'txt': n, 'csv': n, 'csv_unmatched': [...]}
  (csv rows naming no audio file: usually a typo, so the report lists them).
  """
  csv_path = os.path.join(root, CAPTIONS_CSV)
  from_csv = _read_captions_csv(csv_path) if os.path.isfile(csv_path) else {}
  captions, sources = {}, collections.Counter()
  for rel in relpaths:
    stem = os.path.splitext(os.path.join(root, rel))[0]
    for ext in (".json", ".txt"):
      if os.path.isfile(stem + ext):
        caption, source = _read_sidecar(stem + ext), ext[1:]
        break
    else:
      caption, source = from_csv.get(rel, ""), "csv"
    if caption:
      captions[rel] = caption
      sources[source] += 1
  unmatched = sorted(set(from_csv) - set(relpaths))
  return captions, {**{k: sources[k] for k in ("json", "txt", "csv")},
                    "csv_unmatched": unmatched}


def cut_clips(wave: np.ndarray, clip_samples: int, min_clip_samples: int):
  """[time] -> [(clip_index, clip [<= clip_samples])], consecutive; the short tail dropped."""
  return [(i, wave[start:start + clip_samples])
          for i, start in enumerate(range(0, wave.shape[0], clip_samples))
          if wave.shape[0] - start >= min_clip_samples]


class _BuildReport:
  """What the build used and skipped; stored as info.metadata['build_report']."""

  def __init__(self, root: str, config: AudioFolderConfig):
    self.root, self.config = root, config
    self.files_found = 0
    self.file_skips = audio_io.SkipCounter()   # every skipped file named in the report
    self.clip_skips = audio_io.SkipCounter(examples_per_reason=3)  # clips: a few of each
    self.files = collections.Counter()
    self.clips = collections.Counter()
    self.seconds = collections.Counter()
    self.short_clip_samples = collections.defaultdict(list)
    self.captioned_clips = collections.Counter()
    self.captions: dict = {}
    self.empty_splits: list[str] = []

  def as_dict(self) -> dict:
    cfg = self.config
    return {
        "manual_dir": self.root, "config": cfg.name, "sample_rate": cfg.sample_rate,
        "clip_seconds": cfg.clip_seconds, "min_clip_seconds": cfg.min_clip_seconds,
        "files_found": self.files_found, "files_used": sum(self.files.values()),
        "files_skipped": dict(sorted(self.file_skips.counts.items())),
        "files_skipped_examples": dict(self.file_skips.examples),
        "clips_dropped": dict(sorted(self.clip_skips.counts.items())),
        "clips_dropped_examples": dict(self.clip_skips.examples),
        "files": dict(self.files), "clips": dict(self.clips),
        "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        "captioned_clips": dict(self.captioned_clips), "captions": self.captions,
        # Lengths of the clips shorter than clip_seconds (at most one per file): how many
        # clips a crop of n samples drops is known without reading the data.
        "short_clip_samples": {k: sorted(v) for k, v in self.short_clip_samples.items()},
        "splits_without_files": self.empty_splits,
    }

  def format(self) -> str:
    r = self.as_dict()
    lines = [f"\naudio_folder/{r['config']} from {r['manual_dir']}: {r['files_found']} audio "
             f"files, {r['files_used']} used; {self.file_skips.summary()}"]
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
    return "\n".join(lines)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Clips of every usable audio file in the manual dir, resampled to the config's rate."""

  VERSION = tfds.core.Version("1.0.0")
  # TFDS reads a builder's metadata from a folder derived from its module name; this
  # module is imported as musiclm_jax.datasets.NAME (installed from data/NAME), so say where.
  pkg_dir_path = epath.Path(__file__).parent
  RELEASE_NOTES = {"1.0.0": "Clips, captions, hash splits, skip report."}
  BUILDER_CONFIGS = [AudioFolderConfig(name=name, **kw) for name, kw in CONFIGS.items()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Pass any folder of audio files (WAV, FLAC, OGG, Opus, MP3, AIFF; subfolders too) as "
      "--manual_dir. Optional captions: NAME.json ({\"caption\": ...}) or NAME.txt beside "
      f"NAME.flac, or a {CAPTIONS_CSV} (columns path,caption) at the root.")

  _report: Optional[_BuildReport] = None

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # This file. TFDS's own lookup needs the `importlib_resources` package, which
    # tensorflow-datasets does not declare as a dependency.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Audio(
                shape=(None,), dtype=np.float32, sample_rate=cfg.sample_rate,
                doc=f"mono, [-1, 1], up to {cfg.clip_samples} samples"),
            "caption": tfds.features.Text(doc="the file's caption; '' when none"),
            "id": tfds.features.Text(doc="'relpath:clip_index'"),
            "file": tfds.features.Text(doc="source file, relative to the manual dir"),
            "sample_rate": tfds.features.Scalar(dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=False,  # clips of one file are spread through the shards
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    # The report spans all splits; it is complete only when every split is written, and
    # DatasetInfo (with its metadata) is written right after this returns.
    self._report = None
    super()._download_and_prepare(dl_manager, download_config)
    self.info.metadata["build_report"] = self._report.as_dict()
    text = self._report.format()
    logging.info("%s", text)
    print(text, flush=True)  # `tfds build` shows stdout; absl logs may be filtered

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    root = os.path.abspath(os.fspath(dl_manager.manual_dir))
    relpaths = find_audio_files(root)
    if not relpaths:
      raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {root}")
    captions, caption_stats = read_captions(root, relpaths)  # fails fast on bad captions
    self._report = _BuildReport(root, cfg)
    self._report.files_found = len(relpaths)
    self._report.captions = caption_stats
    per_split = collections.defaultdict(list)
    for rel in relpaths:
      per_split[split_for(rel, cfg.validation_percent, cfg.test_percent)].append(rel)
    self._report.empty_splits = [s for s in SPLITS if s not in per_split]
    # The small held-out splits first: a split with no usable file fails in seconds.
    return {split: self._generate_examples(split, root, per_split[split], captions)
            for split in ("validation", "test", "train") if split in per_split}

  def _generate_examples(self, split: str, root: str, relpaths: list[str],
                         captions: dict[str, str]) -> Iterator:
    cfg, report = self.builder_config, self._report
    yielded, skipped = 0, collections.Counter()
    for rel, wave in self._decode(root, relpaths):
      if isinstance(wave, audio_io.AudioError):
        report.file_skips.add(wave)
        skipped[wave.reason] += 1
        continue
      kept, dropped = 0, []
      for index, clip in cut_clips(wave, cfg.clip_samples, cfg.min_clip_samples):
        try:
          audio_io.check_audio(clip, cfg.sample_rate, f"{rel}:{index}")
        except audio_io.AudioError as e:  # e.g. a silent stretch
          dropped.append(e)
          continue
        kept += 1
        report.clips[split] += 1
        report.seconds[split] += clip.shape[0] / cfg.sample_rate
        report.captioned_clips[split] += bool(captions.get(rel))
        if clip.shape[0] < cfg.clip_samples:
          report.short_clip_samples[split].append(int(clip.shape[0]))
        key = f"{rel}:{index}"
        yield key, {"audio": clip, "caption": captions.get(rel, ""), "id": key,
                    "file": rel, "sample_rate": cfg.sample_rate}
      tail = wave.shape[0] % cfg.clip_samples
      if 0 < tail < cfg.min_clip_samples:
        dropped.append(audio_io.AudioError(
            f"{rel}:{wave.shape[0] // cfg.clip_samples}", "too_short",
            f"tail of {tail / cfg.sample_rate:.2f} s < {cfg.min_clip_seconds} s"))
      if kept:
        report.files[split] += 1
        for e in dropped:
          report.clip_skips.add(e)
      else:  # no usable clip (e.g. near-silence that resampling took below the threshold)
        e = audio_io.AudioError(os.path.join(root, rel), dropped[0].reason,
                                f"no usable clip: {'; '.join(str(d) for d in dropped[:3])}")
        report.file_skips.add(e)
        skipped[e.reason] += 1
      yielded += kept
    if not yielded:  # TFDS cannot write an empty split: say which files are at fault
      raise ValueError(
          f"split {split!r} of {root} has no usable clip: its {len(relpaths)} files "
          f"{relpaths[:10]} were skipped ({dict(skipped)}) or had only silent clips. "
          "Fix or remove them, or add files.")

  def _decode(self, root: str, relpaths: list[str]):
    """(relpath, wave [time] or AudioError) in order, DECODE_THREADS files in flight."""
    cfg = self.builder_config

    def load(rel):
      try:
        return audio_io.load_audio(os.path.join(root, rel), sample_rate=cfg.sample_rate,
                                   min_seconds=cfg.min_clip_seconds)
      except audio_io.AudioError as e:
        return e

    with concurrent.futures.ThreadPoolExecutor(DECODE_THREADS) as pool:
      pending = collections.deque()
      for rel in relpaths:
        pending.append((rel, pool.submit(load, rel)))
        if len(pending) > DECODE_THREADS:
          rel_done, future = pending.popleft()
          yield rel_done, future.result()
      while pending:
        rel_done, future = pending.popleft()
        yield rel_done, future.result()
