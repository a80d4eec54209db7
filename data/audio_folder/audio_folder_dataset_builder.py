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
folders are ignored), or a `files.txt` at its root listing them (one path relative to the
root per line; blanks, `#` lines and other extensions ignored), which replaces the walk.
Captions are optional; per file, the first found wins:
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

On Apache Beam (`--beam_pipeline_options=...`, the `[beam]` extra) the same examples come
out (same ids, crops and splits): each top-level folder, or each byte range of files.txt,
is listed on a worker, files are spread over the workers, and the skip reasons are Beam
counters, printed and kept in the report as `beam_counters` (musiclm_jax/dataset_builds/).
Every split with a non-zero share is declared up front there (the listing happens on the
workers): a split that no usable file reaches fails the build.

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
import dataclasses
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from musiclm_jax import dataset_builds
from musiclm_jax.dataset_builds import audio_folder as af

AUDIO_EXTENSIONS = af.AUDIO_EXTENSIONS
CAPTIONS_CSV = af.CAPTIONS_CSV
SPLITS = af.SPLITS
split_for, find_audio_files, cut_clips = af.split_for, af.find_audio_files, af.cut_clips
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
  def spec(self) -> af.ClipSpec:
    return af.ClipSpec(self.name, self.sample_rate, self.clip_seconds, self.min_clip_seconds,
                       self.validation_percent, self.test_percent)


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
                doc=f"mono, [-1, 1], up to {cfg.spec.clip_samples} samples"),
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
    self._use_beam = dataset_builds.beam_requested(download_config)
    self._report, self._unmatched, self._beam_counters = af.BuildReport(), [], None
    super()._download_and_prepare(dl_manager, download_config)
    if self._use_beam:  # the workers' reports, one per split
      from musiclm_jax.dataset_builds import beam as beam_builds  # pylint: disable=g-import-not-at-top
      for split in self._splits:
        path = dataset_builds.report_path(os.fspath(self.data_dir), split)
        self._report.merge(beam_builds.read_pickle(path))
        self._unmatched += beam_builds.read_pickle(path + ".unmatched")
        os.remove(path)
        os.remove(path + ".unmatched")
    report = self._report.as_dict(self._root, self.builder_config.spec, self._unmatched)
    if self._use_beam:
      report["beam_counters"] = self._beam_counters
    self.info.metadata["build_report"] = report
    text = af.format_report(report)
    logging.info("%s", text)
    print(text, flush=True)  # `tfds build` shows stdout; absl logs may be filtered

  def _process_pipeline_result(self, pipeline_result):
    from musiclm_jax.dataset_builds import beam as beam_builds  # pylint: disable=g-import-not-at-top
    self._beam_counters = beam_builds.counters(pipeline_result, "audio_folder")

  def _split_generators(self, dl_manager):
    spec = self.builder_config.spec
    self._root = root = os.path.abspath(os.fspath(dl_manager.manual_dir))
    if self._use_beam:  # listed on the workers; every split with a share is declared
      from musiclm_jax.dataset_builds import beam as beam_builds  # pylint: disable=g-import-not-at-top
      af.root_captions(root)  # a malformed captions.csv fails here, before the pipeline
      shares = {"train": 1, "validation": spec.validation_percent, "test": spec.test_percent}
      self._splits = [split for split in SPLITS if shares[split] > 0]
      return {split: beam_builds.AudioFolderSplit(  # pylint: disable=no-value-for-parameter
          root, spec, split, dataset_builds.report_path(os.fspath(self.data_dir), split))
          for split in self._splits}
    relpaths = af.find_audio_files(root)
    if not relpaths:
      raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {root}")
    from_csv = af.root_captions(root)
    # Every caption file is read before any audio: a malformed one fails at once.
    captions = {rel: af.caption_for(root, rel, from_csv) for rel in relpaths}
    self._unmatched = sorted(set(from_csv) - set(relpaths))
    per_split = collections.defaultdict(list)
    for rel in relpaths:
      per_split[spec.split_of(rel)].append(rel)
    self._splits = [split for split in SPLITS if split in per_split]
    # The small held-out splits first: a split with no usable file fails in seconds.
    return {split: self._generate_examples(split, root, per_split[split], captions)
            for split in ("validation", "test", "train") if split in per_split}

  def _generate_examples(self, split: str, root: str, relpaths: list[str],
                         captions: dict) -> Iterator:
    """The split's examples, DECODE_THREADS files in flight (in order)."""
    spec = self.builder_config.spec

    def work(rel):
      return list(af.process_file(root, rel, split, spec, *captions[rel]))

    yielded, skipped = 0, collections.Counter()
    with concurrent.futures.ThreadPoolExecutor(DECODE_THREADS) as pool:
      pending = collections.deque()
      for rel in relpaths + [None] * DECODE_THREADS:
        if rel is not None:
          pending.append(pool.submit(work, rel))
        if len(pending) > DECODE_THREADS or (rel is None and pending):
          *examples, outcome = pending.popleft().result()
          self._report.add(outcome)
          skipped[outcome.reason] += bool(outcome.reason)
          yielded += len(examples)
          yield from examples
    if not yielded:  # TFDS cannot write an empty split: say which files are at fault
      raise ValueError(
          f"split {split!r} of {root} has no usable clip: its {len(relpaths)} files "
          f"{relpaths[:10]} were skipped ({dict(+skipped)}) or had only silent clips. "
          "Fix or remove them, or add files.")
