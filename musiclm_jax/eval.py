r"""Evaluation entry point (cf. `t5x.eval`): teacher-forced metrics of a checkpoint.

  python -m musiclm_jax.eval --gin_file=lm/tiny.gin --gin_file=tasks/synthetic_arpeggios.gin \
    --gin_file=runs/eval.gin --gin.MODEL_DIR="'/tmp/lm_tiny'"

Writes the metrics to TensorBoard ('eval') and metrics_eval.jsonl, and prints them.
"""

from __future__ import annotations

from typing import Optional

import gin
import seqio

from musiclm_jax import launch
from musiclm_jax.training import data as data_lib
from musiclm_jax.training import eval_loop
from musiclm_jax.training import metrics as metrics_lib
from musiclm_jax.training import models as models_lib
from musiclm_jax.training import partitioning
from musiclm_jax.training import runs


@gin.configurable
def evaluate(model_dir: str = gin.REQUIRED, *, model: models_lib.BaseModel = gin.REQUIRED,
             dataset_cfg: data_lib.DatasetConfig = gin.REQUIRED,
             feature_converter: seqio.FeatureConverter = gin.REQUIRED,
             num_batches: int = 100, checkpoint_step: Optional[int] = None) -> dict:
  """Sums loss/accuracy over up to `num_batches` batches of the split; returns averages."""
  partitioner = partitioning.Partitioner()
  trainer, state, step = runs.restore_for_inference(
      model_dir, model, dataset_cfg, feature_converter, partitioner, checkpoint_step)
  writer = metrics_lib.MetricWriter(model_dir, "eval")
  scalars = eval_loop.evaluate_steps(trainer, state, partitioner, dataset_cfg,
                                     feature_converter, num_batches, writer, step)
  writer.close()
  print(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(scalars.items())))
  return scalars


def main():
  evaluate(launch.required_model_dir())


if __name__ == "__main__":
  launch.run(main)
