r"""Training entry point (cf. `t5x.train`).

  python -m musiclm_jax.train \
    --gin_file=lm/tiny.gin --gin_file=tasks/synthetic_arpeggios.gin \
    --gin.MODEL_DIR="'/tmp/lm_tiny'" --gin.TRAIN_STEPS=200

Re-running the same command on the same MODEL_DIR resumes from the newest readable
checkpoint, with the input pipeline at the same position.
"""

from __future__ import annotations

import os
from typing import Optional, Type

import gin
import jax
import seqio
from absl import logging

from musiclm_jax import atomic, launch
from musiclm_jax.training import checkpoints as checkpoints_lib
from musiclm_jax.training import data as data_lib
from musiclm_jax.training import eval_loop
from musiclm_jax.training import metrics as metrics_lib
from musiclm_jax.training import models as models_lib
from musiclm_jax.training import partitioning
from musiclm_jax.training import train_loop
from musiclm_jax.training import trainer as trainer_lib


@gin.configurable
def train(model_dir: str = gin.REQUIRED, *, model: models_lib.BaseModel = gin.REQUIRED,
          train_dataset_cfg: data_lib.DatasetConfig = gin.REQUIRED,
          feature_converter: seqio.FeatureConverter = gin.REQUIRED,
          total_steps: int = gin.REQUIRED,
          eval_dataset_cfg: Optional[data_lib.DatasetConfig] = None,
          eval_period: int = 0, eval_steps: int = 10, log_period: int = 1,
          partitioner_cls: Type[partitioning.Partitioner] = partitioning.Partitioner,
          trainer_cls: Type[trainer_lib.Trainer] = trainer_lib.Trainer,
          checkpoint_manager_cls=checkpoints_lib.CheckpointManager,
          max_steps_this_run: Optional[int] = None):
  """Trains `model` until `total_steps`, resuming from model_dir. Returns the final state.

  Args:
    model_dir: checkpoints, TensorBoard events, metrics.jsonl and config.gin go here.
    model: a `BaseModel`.
    train_dataset_cfg / eval_dataset_cfg: what to read (global batch sizes).
    feature_converter: task features -> model features.
    total_steps: the step at which training ends.
    eval_period: evaluate every this many steps (0: never).
    eval_steps: batches per evaluation.
    log_period: write metrics every this many steps.
    partitioner_cls, trainer_cls, checkpoint_manager_cls: gin-configurable classes.
    max_steps_this_run: stop after this many steps even if total_steps is not reached
      (preemptible jobs; tests).
  """
  os.makedirs(model_dir, exist_ok=True)
  partitioner = partitioner_cls()
  trainer = trainer_cls(model=model, partitioner=partitioner)
  data_iter = data_lib.DataIterator(
      lambda: data_lib.get_dataset(train_dataset_cfg, feature_converter))
  shapes, types = data_lib.input_shapes_and_types(
      data_lib.get_dataset(train_dataset_cfg, feature_converter), train_dataset_cfg.batch_size)
  abstract_state, _ = trainer.abstract_state(shapes, types)

  checkpoints = checkpoint_manager_cls(model_dir)
  restored = checkpoints.restore(abstract_state)
  if restored is None:
    state, start_step = trainer.create_state(shapes, types), 0
  else:
    state, start_step = restored.state, restored.step
    data_iter.set_state(restored.data_iterator)
    logging.info("resumed from step %d in %s", start_step, model_dir)
    print(f"Resumed from step {start_step} in {model_dir}", flush=True)

  if jax.process_index() == 0:
    atomic.atomic_write_text(os.path.join(model_dir, "config.gin"), gin.config_str())

  writer = metrics_lib.MetricWriter(model_dir, "train")
  eval_writer = metrics_lib.MetricWriter(model_dir, "eval") if eval_dataset_cfg else None
  progress = metrics_lib.ProgressBar(start_step, total_steps)

  def evaluate(state, step):
    eval_loop.evaluate_steps(trainer, state, partitioner, eval_dataset_cfg, feature_converter,
                             eval_steps, eval_writer, step)

  try:
    result = train_loop.run(
        trainer, state, start_step, data_iter, total_steps, checkpoints=checkpoints,
        writer=writer, progress=progress,
        evaluate=evaluate if eval_dataset_cfg is not None else None,
        eval_period=eval_period, log_period=log_period,
        max_steps_this_run=max_steps_this_run)
  finally:
    progress.close()
    checkpoints.close()
    writer.close()
    if eval_writer:
      eval_writer.close()
  return result.state


def main():
  train(launch.required_model_dir())


if __name__ == "__main__":
  launch.run(main)
