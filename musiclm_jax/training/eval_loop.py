"""The evaluation loop shared by training (periodic eval) and `musiclm_jax.eval`: summed
eval metrics over a number of batches of a split."""

from __future__ import annotations

import jax
import numpy as np
from absl import logging

from musiclm_jax.training import data as data_lib
from musiclm_jax.training import models as models_lib

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
