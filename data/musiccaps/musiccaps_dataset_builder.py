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
`info.metadata['build_report']` (and printed at the end of the build). The work (reading
the CSV, finding and cutting the clips) is in `musiclm_jax.dataset_builds.musiccaps`.

  musiclm-jax build-data musiccaps --manual_dir=DIR --data_dir=~/tfds --config=16khz

On Apache Beam (the `[beam]` extra): add --beam_pipeline_options=... (same examples).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from musiclm_jax import dataset_builds
from musiclm_jax.dataset_builds import musiccaps as mcaps

CSV_NAME = mcaps.CSV_NAME
SPLITS = mcaps.SPLITS


@dataclasses.dataclass(eq=False)
class MusicCapsConfig(tfds.core.BuilderConfig):
  sample_rate: int = 16000


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
    self._use_beam = dataset_builds.beam_requested(download_config)
    self._report = mcaps.BuildReport()
    super()._download_and_prepare(dl_manager, download_config)
    if self._use_beam:  # the workers' reports, one per split
      from musiclm_jax.dataset_builds import beam as beam_builds  # pylint: disable=g-import-not-at-top
      for split in self._splits:
        path = dataset_builds.report_path(os.fspath(self.data_dir), split)
        self._report.merge(beam_builds.read_pickle(path))
        os.remove(path)
    report = self._report.as_dict(self._rows)
    if self._use_beam:
      report["beam_counters"] = self._beam_counters
    self.info.metadata["build_report"] = report
    skipped = sum(report["skipped"].values())
    print(f"musiccaps/{self.builder_config.name}: {self._rows} rows; written "
          f"{report['written']}; skipped {skipped} {report['skipped']}", flush=True)

  def _process_pipeline_result(self, pipeline_result):
    from musiclm_jax.dataset_builds import beam as beam_builds  # pylint: disable=g-import-not-at-top
    self._beam_counters = beam_builds.counters(pipeline_result, "musiccaps")

  def _split_generators(self, dl_manager):
    root = os.path.abspath(os.fspath(dl_manager.manual_dir))
    rows = mcaps.read_csv(os.path.join(root, CSV_NAME))
    self._rows = len(rows)
    clips = mcaps.find_clips(root)
    members = mcaps.split_rows(rows)
    self._splits = [split for split in SPLITS if members[split]]
    sources = {split: [(row, clips.get(row.ytid)) for row in members[split]]
               for split in self._splits}
    if self._use_beam:
      from musiclm_jax.dataset_builds import beam as beam_builds  # pylint: disable=g-import-not-at-top
      return {split: beam_builds.MusicCapsSplit(  # pylint: disable=no-value-for-parameter
          sources[split], split, self.builder_config.sample_rate,
          dataset_builds.report_path(os.fspath(self.data_dir), split))
          for split in self._splits}
    return {split: self._generate_examples(split, sources[split]) for split in self._splits}

  def _generate_examples(self, split: str, sources: list):
    rate = self.builder_config.sample_rate
    written = 0
    for source in sources:
      for item in mcaps.process_row(source, split, rate):
        if isinstance(item, tuple):
          written += 1
          yield item
        else:
          self._report.add(item)
    if not written:  # TFDS cannot write an empty split: say why
      skipped = {k: len(v) for k, v in self._report.skipped.items()}
      raise ValueError(f"musiccaps split {split!r}: none of its {len(sources)} rows has "
                       f"usable audio (skipped {skipped}); e.g. {sources[0][0].ytid!r}")
