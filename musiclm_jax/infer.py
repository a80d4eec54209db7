r"""Inference entry point (cf. `t5x.infer`): sample from a trained LM checkpoint.

  python -m musiclm_jax.infer --gin_file=lm/tiny.gin --gin_file=tasks/synthetic_arpeggios.gin \
    --gin_file=runs/infer.gin --gin.MODEL_DIR="'/tmp/lm_tiny'"

Conditions on the prefixes of a dataset split, samples targets with the gin-configured
decoder parameters, writes `predictions_step<N>.jsonl` into `infer.output_dir` (default
MODEL_DIR/inference) and prints the task's SeqIO
metrics (predictions against the split's targets).
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import gin
import jax
import numpy as np
import seqio

from musiclm_jax import atomic, launch
from musiclm_jax.training import data as data_lib
from musiclm_jax.training import models as models_lib
from musiclm_jax.training import partitioning
from musiclm_jax.training import runs



@gin.configurable
def infer(model_dir: str = gin.REQUIRED, *, model: models_lib.BaseModel = gin.REQUIRED,
          dataset_cfg: data_lib.DatasetConfig = gin.REQUIRED,
          feature_converter: seqio.FeatureConverter = gin.REQUIRED,
          output_dir: Optional[str] = None, num_batches: int = 1,
          decoder_params: Optional[Mapping] = None, use_ema: bool = True,
          checkpoint_step: Optional[int] = None, seed: int = 0) -> dict:
  """Samples for `num_batches` batches; returns the task metrics."""
  partitioner = partitioning.Partitioner()
  _, state, step = runs.restore_for_inference(model_dir, model, dataset_cfg, feature_converter,
                                         partitioner, checkpoint_step)
  params = state.params_for_inference(use_ema)
  decoder_params = dict(decoder_params or {})
  targets, predictions, records = [], [], []
  ds = data_lib.get_dataset(dataset_cfg, feature_converter)
  rng = jax.random.key(seed)
  for i, batch in enumerate(ds.as_numpy_iterator()):
    if i >= num_batches:
      break
    length = batch["decoder_target_tokens"].shape[1]
    inputs = {k: v for k, v in batch.items() if k == "prefix_tokens"}
    with partitioner.activation_context():
      tokens = model.predict_batch(params, inputs, jax.random.fold_in(rng, i),
                                   max_decode_length=length, **decoder_params)
    tokens = np.asarray(jax.device_get(tokens))
    for row in range(tokens.shape[0]):
      weights = batch["decoder_loss_weights"][row] > 0
      target = batch["decoder_target_tokens"][row][weights]
      prediction = tokens[row][: len(target)]
      targets.append(target)
      predictions.append(prediction)
      records.append({"prefix_tokens": inputs.get("prefix_tokens", np.zeros((1, 0)))[row]
                      .tolist(), "prediction": prediction.tolist(),
                      "target": target.tolist()})

  task = seqio.get_mixture_or_task(dataset_cfg.mixture_or_task_name)
  metrics = {}
  for metric_fn in getattr(task, "metric_fns", []) or []:
    metrics.update(metric_fn(targets, predictions))
  if jax.process_index() == 0:
    output_dir = output_dir or os.path.join(model_dir, "inference")
    atomic.atomic_write_text(os.path.join(output_dir, f"predictions_step{step}.jsonl"),
                             "".join(json.dumps(record) + "\n" for record in records))
    print(f"step {step}: sampled {len(records)} sequences -> {output_dir}")
    for name, value in metrics.items():
      print(f"  {name}: {value:.4f}")
  return metrics


def main():
  infer(launch.required_model_dir())


if __name__ == "__main__":
  launch.run(main)
