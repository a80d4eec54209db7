"""A tiny decoder-only LM on the built-in task, built in Python (no gin) for in-process tests."""

from __future__ import annotations

import jax
import optax

from musiclm_jax.lm import decoder_lm, models as lm_models
from musiclm_jax.tasks import feature_converters, synthetic
from musiclm_jax.training import data as data_lib

FEATURE_LENGTHS = {"prefix_tokens": synthetic.PREFIX_LENGTH, "targets": 16}


def tiny_config(**overrides) -> decoder_lm.DecoderConfig:
  kw = dict(target_vocab_size=synthetic.TARGET_VOCAB_SIZE,
            prefix_vocab_size=synthetic.PREFIX_VOCAB_SIZE, num_layers=2, num_heads=2,
            head_dim=16, emb_dim=32, mlp_dim=64, dropout_rate=0.0, max_length=64)
  kw.update(overrides)
  return decoder_lm.DecoderConfig(**kw)


def tiny_model(learning_rate=1e-3, **overrides) -> lm_models.DecoderOnlyLMModel:
  return lm_models.DecoderOnlyLMModel(decoder_lm.DecoderOnlyLM(tiny_config(**overrides)),
                                      optax.adam(learning_rate))


def batches(count: int, batch_size: int = 8, seed: int = 0):
  """`count` host batches of the synthetic task (numpy dicts)."""
  cfg = data_lib.DatasetConfig("synthetic_arpeggios", FEATURE_LENGTHS, "train", batch_size,
                               shuffle=True, seed=seed)
  converter = feature_converters.PrefixLMFeatureConverter(
      bos_id=synthetic.TARGET_VOCAB_SIZE)
  ds = data_lib.get_dataset(cfg, converter, process_index=0, process_count=1)
  return list(ds.take(count).as_numpy_iterator())


def input_shapes(batch) -> dict:
  return {k: v.shape for k, v in batch.items()}


def single_device_partitioner():
  from musiclm_jax.training import partitioning
  return partitioning.Partitioner(devices=jax.devices()[:1])


def train(partitioner, batches, steps: int, model=None, **trainer_kw):
  """`steps` train steps of `model` (default the tiny model) on `batches` under
  `partitioner`: (state, losses)."""
  from musiclm_jax.training import trainer as trainer_lib
  trainer = trainer_lib.Trainer(model or tiny_model(), partitioner, **trainer_kw)
  state = trainer.create_state(input_shapes(batches[0]))
  losses = []
  for batch in batches[:steps]:
    state, metrics = trainer.train_step(state, partitioner.shard_batch(batch))
    losses.append(float(metrics["loss"]))
  return state, losses
