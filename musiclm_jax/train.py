r"""Training entry point (cf. `t5x.train`).

  python -m musiclm_jax.train \
    --gin_file=lm/tiny.gin --gin_file=runs/synthetic_arpeggios.gin \
    --gin.MODEL_DIR="'/tmp/lm_tiny'" --gin.TRAIN_STEPS=200

Re-running the same command on the same MODEL_DIR resumes from the newest readable
checkpoint, with the input pipeline at the same position.
"""

from __future__ import annotations

import os
from typing import Optional, Type

import gin
import jax
import numpy as np
import seqio
from absl import logging

from musiclm_jax import launch
from musiclm_jax.training import checkpoints as checkpoints_lib
from musiclm_jax.training import data as data_lib
from musiclm_jax.training import metrics as metrics_lib
from musiclm_jax.training import models as models_lib
from musiclm_jax.training import partitioning
from musiclm_jax.training import trainer as trainer_lib


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss or gradient norm."""


def input_shapes_and_types(dataset, global_batch_size: int):
  """Global input shapes/dtypes from a per-host batched dataset's element_spec."""
  spec = dataset.element_spec
  shapes = {k: (global_batch_size,) + tuple(v.shape[1:]) for k, v in spec.items()}
  types = {k: v.dtype.as_numpy_dtype for k, v in spec.items()}
  return shapes, types


def _host_scalars(step: int, metrics) -> dict:
  scalars = models_lib.metrics_to_scalars(jax.device_get(metrics))
  bad = {k: float(v) for k, v in scalars.items() if not np.all(np.isfinite(v))}
  if bad:
    raise NonFiniteLossError(f"non-finite training metrics at step {step}: {bad}")
  return scalars


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
  shapes, types = input_shapes_and_types(
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
    with open(os.path.join(model_dir, "config.gin"), "w", encoding="utf-8") as f:
      f.write(gin.config_str())

  writer = metrics_lib.MetricWriter(model_dir, "train")
  eval_writer = metrics_lib.MetricWriter(model_dir, "eval") if eval_dataset_cfg else None
  end_step = total_steps if max_steps_this_run is None else min(
      total_steps, start_step + max_steps_this_run)
  progress = metrics_lib.ProgressBar(start_step, total_steps)
  pending = None  # (step, metrics) not yet checked on the host: one step of lag keeps
  # the device busy while the host checks the previous step for NaNs.

  def flush_pending():
    nonlocal pending
    if pending is None:
      return
    step, metrics = pending
    pending = None
    try:
      scalars = _host_scalars(step, metrics)
    except NonFiniteLossError as e:
      checkpoints.wait_until_finished()
      last = checkpoints.latest_step()
      raise NonFiniteLossError(
          f"{e}. Training stopped; the last good checkpoint (step {last}) in "
          f"{checkpoints.directory} is intact. Lower the learning rate, enable clipping, "
          "or inspect the data near this step.") from None
    if step % log_period == 0 or step == end_step:
      writer.write_scalars(step, scalars)
    progress.update(step, {k: v for k, v in scalars.items()
                           if k == "loss" or k.endswith("/loss")})

  try:
    for step in range(start_step, end_step):
      batch = partitioner.shard_batch(next(data_iter))
      state, metrics = trainer.train_step(state, batch)
      flush_pending()
      pending = (step + 1, metrics)
      done = step + 1
      if checkpoints.should_save(done) or done == end_step:
        flush_pending()  # Never save a state whose loss was not checked.
        checkpoints.save(done, state, data_iter.get_state(), force=True)
      if eval_dataset_cfg is not None and eval_period and done % eval_period == 0:
        flush_pending()
        evaluate_steps(trainer, state, partitioner, eval_dataset_cfg, feature_converter,
                       eval_steps, eval_writer, done)
    flush_pending()
  finally:
    progress.close()
    checkpoints.close()
    writer.close()
    if eval_writer:
      eval_writer.close()
  return state


def evaluate_steps(trainer, state, partitioner, dataset_cfg, feature_converter, num_steps,
                   writer, step) -> dict:
  """Sums eval metrics over `num_steps` batches (fewer if the split ends) and writes them."""
  totals = None
  ds = data_lib.get_dataset(dataset_cfg, feature_converter)
  for i, batch in enumerate(ds.as_numpy_iterator()):
    if i >= num_steps:
      break
    metrics = jax.device_get(trainer.eval_step(state, partitioner.shard_batch(batch)))
    totals = metrics if totals is None else jax.tree.map(np.add, totals, metrics)
    if i == 0 and writer is not None:
      writer.write_summaries(step, trainer.summaries(state, batch))
  if totals is None:
    logging.warning("step %d: no evaluation: split %r of %s has no full batch of %d",
                    step, dataset_cfg.split, dataset_cfg.mixture_or_task_name,
                    dataset_cfg.batch_size)
  scalars = models_lib.metrics_to_scalars(totals or {})
  if writer is not None and scalars:
    writer.write_scalars(step, scalars)
  return scalars


def main():
  train(launch.required_model_dir())


if __name__ == "__main__":
  launch.run(main)
