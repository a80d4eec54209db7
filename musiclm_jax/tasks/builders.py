"""The project's TFDS builders (`data/NAME/NAME_dataset_builder.py`), built from Python.

`musiclm-jax build-data NAME ...` calls `build`; `tfds build data/NAME --config=C
[--manual_dir=DIR] --data_dir=OUT [--beam_pipeline_options=...]` does the same (the `tfds`
script needs the `[beam]` extra: it imports apache_beam and mlcroissant at start-up).
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

import tensorflow_datasets as tfds

# data/ is installed as this package (setup.py): in a wheel and in an editable install.
DATASETS_PACKAGE = "musiclm_jax.datasets"
NAMES = ("audio_folder", "music_captions", "musiccaps")


def dataset_dir(name: str) -> str:
  """The folder of data/NAME (what `tfds build` takes), wherever the package is installed."""
  return os.path.dirname(importlib.import_module(f"{DATASETS_PACKAGE}.{name}").__file__)


def builder_module(name: str):
  """The module of data/NAME's builder, imported once under its package name: TFDS
  registers a builder once per name."""
  if name not in NAMES:
    raise ValueError(f"unknown dataset {name!r}: the builders are {', '.join(NAMES)}")
  return importlib.import_module(f"{DATASETS_PACKAGE}.{name}.{name}_dataset_builder")


def builder_cls(name: str):
  """The `Builder` class of data/NAME."""
  return builder_module(name).Builder


def beam_options(flags: str):
  """'runner=DirectRunner,direct_num_workers=2' (tfds build's --beam_pipeline_options) ->
  Beam PipelineOptions. ImportError naming the extra when apache_beam is not installed."""
  try:
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Beam builds need apache-beam: pip install 'musiclm-jax[beam]' "
                      f"({e})") from e
  return pipeline_options.PipelineOptions(
      flags=[f"--{flag.strip()}" for flag in flags.split(",") if flag.strip()])


def build(name: str, data_dir: str, config: str, manual_dir: Optional[str] = None,
          beam_pipeline_options: Optional[str] = None):
  """Builds data/NAME's `config` into data_dir (a prepared dataset is reused); returns the
  builder. `manual_dir` is the source folder of builders that read local files;
  `beam_pipeline_options` ('runner=...,...') runs the build on Apache Beam."""
  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"manual_dir {manual_dir} is not a folder")
  builder = builder_cls(name)(config=config, data_dir=data_dir)
  options = beam_options(beam_pipeline_options) if beam_pipeline_options else None
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, beam_options=options))
  return builder
