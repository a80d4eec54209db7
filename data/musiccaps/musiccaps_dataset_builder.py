"""TFDS builder of `musiccaps`: the public MusicCaps CSV joined with already-downloaded clips.

MusicCaps (Agostinelli et al. 2023) is 5,521 ten-second AudioSet clips with a free-text
caption and an aspect list written by musicians. Neither the CSV nor the audio can be
downloaded here (YouTube), so both come from the manual dir:

  MANUAL_DIR/musiccaps-public.csv   columns ytid, start_s, end_s, aspect_list, caption,
                                    is_balanced_subset, is_audioset_eval (others ignored)
  MANUAL_DIR/**/<ytid>.<ext>        one audio file per clip, anywhere below (wav, flac, ogg,
                                    opus, mp3; also named '<ytid>_...' or '<ytid>-...'),
                                    either the 10 s clip itself or the whole video's audio
                                    (then cut at [start_s, end_s))

Splits (the paper's): 'train' (is_audioset_eval false), 'test' (is_audioset_eval true: the
2.9k clips of AudioSet's eval set) and 'balanced_1k' (is_balanced_subset: the genre-balanced
1k, which overlaps the others). A row whose clip is missing, unreadable, silent or of a
length matching neither form is skipped and counted per reason in
`info.metadata['build_report']` (and printed at the end of the build).

  musiclm-jax build-data musiccaps --manual_dir=DIR --data_dir=~/tfds --config=16khz
"""

from __future__ import annotations

import ast
import collections
import csv
import dataclasses
import os
from typing import Dict, Iterator, List

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from musiclm_jax.audio import io as audio_io

CSV_NAME = "musiccaps-public.csv"
REQUIRED_COLUMNS = ("ytid", "start_s", "end_s", "aspect_list", "caption",
                    "is_balanced_subset", "is_audioset_eval")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
SPLITS = ("train", "test", "balanced_1k")
LENGTH_TOLERANCE_SECONDS = 1.0


@dataclasses.dataclass(eq=False)
class MusicCapsConfig(tfds.core.BuilderConfig):
  sample_rate: int = 16000


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


class Builder(tfds.core.GeneratorBasedBuilder):
  """musiccaps."""

  VERSION = tfds.core.Version("1.0.0")
  # TFDS reads a builder's metadata from a folder derived from its module name; this
  # module is imported as musiclm_jax.datasets.NAME (installed from data/NAME), so say where.
  pkg_dir_path = epath.Path(__file__).parent
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [MusicCapsConfig(name="16khz", sample_rate=16000,
                                     description="16 kHz mono (MuLan, w2v-BERT, evaluation)"),
                     MusicCapsConfig(name="24khz", sample_rate=24000,
                                     description="24 kHz mono (SoundStream, tokenize job)")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Put the public MusicCaps CSV ({CSV_NAME}) in --manual_dir, with the clips' audio "
      "files (named by YouTube id) anywhere below it.")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # This file (TFDS's own lookup needs `importlib_resources`, an undeclared dependency).
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    rate = self.builder_config.sample_rate
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Audio(shape=(None,), dtype=np.float32, sample_rate=rate,
                                         doc="mono, [-1, 1], the 10 s clip"),
            "sample_rate": tfds.features.Scalar(dtype=np.int32),
            "caption": tfds.features.Text(), "aspect_list": tfds.features.Text(),
            "id": tfds.features.Text(doc="'ytid:start_s'"), "ytid": tfds.features.Text(),
            "start_s": tfds.features.Scalar(dtype=np.float32),
            "end_s": tfds.features.Scalar(dtype=np.float32),
            "is_balanced_subset": tfds.features.Scalar(dtype=np.bool_),
            "is_audioset_eval": tfds.features.Scalar(dtype=np.bool_),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    self._skips = audio_io.SkipCounter()
    self._written = collections.Counter()
    super()._download_and_prepare(dl_manager, download_config)
    report = {"rows": self._rows, "written": dict(self._written),
              "skipped": dict(self._skips.counts), "skipped_examples": dict(self._skips.examples)}
    self.info.metadata["build_report"] = report
    print(f"musiccaps/{self.builder_config.name}: {self._rows} rows; written "
          f"{dict(self._written)}; {self._skips.summary()}", flush=True)

  def _split_generators(self, dl_manager):
    root = os.path.abspath(os.fspath(dl_manager.manual_dir))
    rows = read_csv(os.path.join(root, CSV_NAME))
    self._rows = len(rows)
    clips = find_clips(root)
    members = {"train": [r for r in rows if not r.audioset_eval],
               "test": [r for r in rows if r.audioset_eval],
               "balanced_1k": [r for r in rows if r.balanced]}
    return {split: self._generate_examples(split, members[split], clips)
            for split in SPLITS if members[split]}

  def _generate_examples(self, split: str, rows: List[Row], clips: Dict[str, str]
                         ) -> Iterator:
    rate = self.builder_config.sample_rate
    count_skips = split != "balanced_1k"  # its rows are also in train/test: count once
    written = 0
    for row in rows:
      path = clips.get(row.ytid)
      try:
        if path is None:
          raise audio_io.AudioError(row.ytid, "missing", "no audio file with this id")
        audio = clip_audio(path, row, rate)
      except audio_io.AudioError as e:
        if count_skips:
          self._skips.add(e)
        continue
      self._written[split] += 1
      written += 1
      key = f"{row.ytid}:{row.start_s:g}"
      yield key, {"audio": audio, "sample_rate": rate, "caption": row.caption,
                  "aspect_list": row.aspects, "id": key, "ytid": row.ytid,
                  "start_s": row.start_s, "end_s": row.end_s,
                  "is_balanced_subset": row.balanced, "is_audioset_eval": row.audioset_eval}
    if not written:  # TFDS cannot write an empty split: say why
      raise ValueError(f"musiccaps split {split!r}: none of its {len(rows)} rows has usable "
                       f"audio ({self._skips.summary()}); e.g. {rows[0].ytid!r}")
