"""The project's TFDS builders (`data/NAME/NAME_dataset_builder.py`), built from Python.

`tfds build data/NAME --config=C [--manual_dir=DIR] --data_dir=OUT` does the same, but its
script in tensorflow-datasets 4.9 imports apache_beam at start-up (not a dependency here);
`musiclm-jax build-data NAME ...` calls `build`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional

import tensorflow_datasets as tfds

# data/, beside the package in a source checkout.
DATA_ROOT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data")


def dataset_dir(name: str) -> str:
  return os.path.join(DATA_ROOT, name)


def builder_cls(name: str):
  """The `Builder` class of data/NAME, imported as `tfds build` imports it.

  Always through the module name `NAME.NAME_dataset_builder` (with data/ on sys.path): TFDS
  registers a builder once per name, so two imports under different module names would
  collide.
  """
  path = os.path.join(dataset_dir(name), f"{name}_dataset_builder.py")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"the {name} builder is not at {path} (builders ship in the "
                            "source checkout, not in the package)")
  if DATA_ROOT not in sys.path:
    sys.path.insert(0, DATA_ROOT)
  return importlib.import_module(f"{name}.{name}_dataset_builder").Builder


def build(name: str, data_dir: str, config: str, manual_dir: Optional[str] = None):
  """Builds data/NAME's `config` into data_dir (a prepared dataset is reused); returns the
  builder. `manual_dir` is the source folder of builders that read local files."""
  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"manual_dir {manual_dir} is not a folder")
  builder = builder_cls(name)(config=config, data_dir=data_dir)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=download_config)
  return builder
