"""TFDS builder of `music_captions`: corpus pieces rendered to captioned audio clips.

Pieces from music21's bundled corpus (Bach chorales, Palestrina, Monteverdi madrigals,
fiddle and Irish folk tunes) are played by a General MIDI SoundFont with drawn
instruments, tempo, transposition, dynamics and drums, and captioned MusicCaps-style from
exactly those choices (`musiclm_jax.music.music_captions`). Everything is a function of
(seed, example index): building a config twice gives the same data. Splits are by piece
(no piece in two splits).

Configs are `SIZE_RATE`: tiny (48 clips of 4 s: tests), small (1200 clips of 10 s, 3.3 h),
medium (3600 clips of 10 s, 10 h; its first 1200 are small's, as an example is a function
of its index), large (7200 clips of 10 s, 20 h, the FluidR3 SoundFont); at 16 kHz
(w2v-BERT, MuLan) or 24 kHz (SoundStream, tokenize job). The same index gives the same
piece, performance and caption at both rates.

Features: audio (mono float32), sample_rate, caption, id ('seed:index'), and what the
caption was written from: piece, style, composer, ensemble, instruments, drums, bpm,
tempo ('slow' | 'moderate' | 'fast'), key, mode, transpose, velocity.

A clip that renders silent is skipped and counted in `info.metadata['build_report']`.
Planning (parsing the pieces) runs in one process per CPU core, the examples that open the
same corpus file together; the output depends on neither.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from musiclm_jax.music import music_captions as mc
from musiclm_jax.music import render

SIZES = {"tiny": dict(num_examples=48, clip_seconds=4.0, validation_percent=20.0,
                      test_percent=20.0),
         "small": dict(num_examples=1200, clip_seconds=10.0),
         "medium": dict(num_examples=3600, clip_seconds=10.0),
         "large": dict(num_examples=7200, clip_seconds=10.0, soundfont="fluid-soundfont-gm")}
RATES = {"16khz": 16000, "24khz": 24000}
# One planning process per core, at most 16: each imports music21 (~200 MB), and past that
# the single rendering loop is the bottleneck anyway.
PLANNING_WORKERS = min(os.cpu_count() or 1, 16)


@dataclasses.dataclass(eq=False)
class MusicCaptionsConfig(tfds.core.BuilderConfig):
  spec: mc.MusicCaptionsSpec = None


def _configs():
  out = []
  for size, kw in SIZES.items():
    for rate_name, rate in RATES.items():
      spec = mc.MusicCaptionsSpec(sample_rate=rate, **kw)
      out.append(MusicCaptionsConfig(
          name=f"{size}_{rate_name}", spec=spec,
          description=(f"{spec.num_examples} clips of {spec.clip_seconds:g} s at {rate} Hz "
                       f"({spec.soundfont})")))
  return out


class Builder(tfds.core.GeneratorBasedBuilder):
  """music_captions."""

  VERSION = tfds.core.Version("1.0.0")
  # TFDS reads a builder's metadata from a folder derived from its module name; this
  # module is imported as musiclm_jax.datasets.NAME (installed from data/NAME), so say where.
  pkg_dir_path = epath.Path(__file__).parent
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = _configs()

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # This file (TFDS's own lookup needs `importlib_resources`, an undeclared dependency).
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.builder_config.spec
    text = tfds.features.Text
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Audio(shape=(spec.clip_samples,), dtype=np.float32,
                                         sample_rate=spec.sample_rate, doc="mono, [-1, 1]"),
            "sample_rate": tfds.features.Scalar(dtype=np.int32),
            "caption": text(), "id": text(), "piece": text(), "style": text(),
            "composer": text(), "ensemble": text(), "instruments": text(),
            "drums": tfds.features.Scalar(dtype=np.bool_),
            "bpm": tfds.features.Scalar(dtype=np.float32), "tempo": text(), "key": text(),
            "mode": text(), "transpose": tfds.features.Scalar(dtype=np.int32),
            "velocity": tfds.features.Scalar(dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    self._report = {"planned": 0, "skipped": collections.Counter(), "written": {}}
    super()._download_and_prepare(dl_manager, download_config)
    report = dict(self._report, skipped=dict(self._report["skipped"]))
    self.info.metadata["build_report"] = report
    print(f"music_captions/{self.builder_config.name}: {report}", flush=True)

  def _split_generators(self, dl_manager):
    spec = self.builder_config.spec
    soundfont = render.soundfont_path(spec.soundfont)
    plans = collections.defaultdict(list)
    for plan, notes in mc.plan_examples(spec, range(spec.num_examples), PLANNING_WORKERS):
      plans[plan.split].append((plan, notes))
    self._report["planned"] = spec.num_examples
    return {split: self._generate_examples(split, plans[split], soundfont)
            for split in ("train", "validation", "test") if plans[split]}

  def _generate_examples(self, split, plans, soundfont):
    spec = self.builder_config.spec
    written = 0
    for plan, notes in plans:
      try:
        example = mc.render_example(spec, plan, soundfont, notes)
      except ValueError as e:  # silent rendering
        logging.warning("skipped: %s", e)
        self._report["skipped"]["silent"] += 1
        continue
      written += 1
      yield example["id"], {**example, "sample_rate": spec.sample_rate}
    self._report["written"][split] = written
