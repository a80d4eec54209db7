"""The project's TFDS builders (`data/NAME/NAME_dataset_builder.py`), built from Python.

`tfds build data/NAME --config=C [--manual_dir=DIR] --data_dir=OUT` does the same, but its
script in tensorflow-datasets 4.9 imports apache_beam at start-up (not a dependency here);
`musiclm-jax build-data NAME ...` calls `build`.
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


def build(name: str, data_dir: str, config: str, manual_dir: Optional[str] = None):
  """Builds data/NAME's `config` into data_dir (a prepared dataset is reused); returns the
  builder. `manual_dir` is the source folder of builders that read local files."""
  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"manual_dir {manual_dir} is not a folder")
  builder = builder_cls(name)(config=config, data_dir=data_dir)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=download_config)
  return builder
