"""A finished or running training run, restored for inference.

A run folder (MODEL_DIR) holds `config.gin` (the run's operative gin config) and Orbax
checkpoints. Two ways in, for two kinds of callers:
  - `load_run`: the model config rebuilt from config.gin and the newest (or a given)
    checkpoint as numpy arrays, with no mesh: tokenizers, codec export and bundle export.
  - `restore_for_inference`: a sharded TrainState on a Partitioner's mesh, its shapes taken
    from the dataset the model will run on: `musiclm_jax.eval` and `musiclm_jax.infer`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import gin
import seqio

from musiclm_jax.training import checkpoints as checkpoints_lib
from musiclm_jax.training import data as data_lib
from musiclm_jax.training import models as models_lib
from musiclm_jax.training import optimizers  # noqa: F401  (configurables named in config.gin)
from musiclm_jax.training import partitioning
from musiclm_jax.training import trainer as trainer_lib


@dataclasses.dataclass
class TrainedRun:
  """What inference needs from a training run: its model config, step and variables."""
  config: Any
  step: int
  params: Any
  flax_mutables: Any


def load_run(model_dir: str, make_config: Callable[[], Any], step: Optional[int] = None,
             use_ema: bool = True) -> TrainedRun:
  """Reads MODEL_DIR/config.gin and its newest (or `step`) checkpoint as numpy.

  `make_config` builds the model config under that gin config (e.g. `SoundStreamConfig`);
  its module, imported by the caller, registers the configurables it reads. Bindings of
  configurables this process has not imported (tasks, entry points) are skipped. Params are
  the EMA ones when saved and `use_ema`.
  """
  config_path = os.path.join(model_dir, "config.gin")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: is {model_dir!r} a training run?")
  with gin.unlock_config():
    gin.parse_config_file(config_path, skip_unknown=True)
  config = make_config()
  restored_step, state = checkpoints_lib.restore_numpy_state(model_dir, step)
  params = state["ema_params"] if (use_ema and state.get("ema_params")) else state["params"]
  return TrainedRun(config, restored_step, params, state.get("flax_mutables") or {})


def restore_for_inference(model_dir: str, model: models_lib.BaseModel,
                          dataset_cfg: data_lib.DatasetConfig,
                          feature_converter: seqio.FeatureConverter,
                          partitioner: partitioning.Partitioner,
                          step: Optional[int] = None):
  """(trainer, state, step) restored from model_dir onto `partitioner`'s mesh."""
  trainer = trainer_lib.Trainer(model=model, partitioner=partitioner)
  shapes, types = data_lib.input_shapes_and_types(
      data_lib.get_dataset(dataset_cfg, feature_converter), dataset_cfg.batch_size)
  abstract_state, _ = trainer.abstract_state(shapes, types)
  step, state = checkpoints_lib.restore_state(model_dir, abstract_state, step)
  return trainer, state, step
