"""Sampling: the cached loop equals full recomputation, guidance, filtering, a trained model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.lm import decoding
from musiclm_jax.tasks import synthetic
from musiclm_jax.training import trainer as trainer_lib
from tests import lm_fixtures

LENGTH = 12


@pytest.fixture(scope="module")
def batch():
  return lm_fixtures.batches(1)[0]


def params_for(model, batch):
  variables = model.get_initial_variables(jax.random.key(0), lm_fixtures.input_shapes(batch))
  return nn.meta.unbox(variables)["params"]


def both_paths(model, params, inputs, **decoder_params):
  cached = model.predict_batch_with_aux(params, inputs, jax.random.key(7),
                                        max_decode_length=LENGTH, **decoder_params)
  full = model.predict_batch_with_aux(params, inputs, jax.random.key(7),
                                      max_decode_length=LENGTH, use_cache=False,
                                      **decoder_params)
  return cached, full


@pytest.mark.parametrize("model_kw,decoder_params", [
    ({}, {"temperature": 0.0}),
    ({}, {"temperature": 1.0}),
    ({}, {"temperature": 0.8, "top_k": 5}),
    ({}, {"temperature": 1.2, "top_p": 0.9}),
    ({}, {"temperature": 1.0, "guidance_scale": 3.0}),
    ({"position_embedding": "rotary"}, {"temperature": 1.0}),
    ({"num_kv_heads": 1}, {"temperature": 1.0, "guidance_scale": 2.0}),
    ({"scan_layers": True}, {"temperature": 1.0, "guidance_scale": 2.0}),
    # the cache takes the einsum path; full recomputation the library attention
    ({"attention_implementation": "xla"}, {"temperature": 1.0}),
])
def test_cached_decoding_equals_full_recomputation(batch, model_kw, decoder_params):
  model = lm_fixtures.tiny_model(**model_kw)
  params = params_for(model, batch)
  inputs = {"prefix_tokens": batch["prefix_tokens"]}
  (cached, cached_aux), (full, full_aux) = both_paths(model, params, inputs, **decoder_params)
  assert cached.shape == (batch["prefix_tokens"].shape[0], LENGTH) and cached.dtype == jnp.int32
  np.testing.assert_array_equal(cached, full)
  np.testing.assert_allclose(cached_aux["log_probs"], full_aux["log_probs"], rtol=1e-4,
                             atol=1e-5)
  assert np.all(np.asarray(cached) < model.config.target_vocab_size)


def test_prompted_continuation_keeps_the_prompt(batch):
  model = lm_fixtures.tiny_model()
  params = params_for(model, batch)
  prompt = batch["decoder_target_tokens"][:, :4]
  inputs = {"prefix_tokens": batch["prefix_tokens"], "decoder_prompt_tokens": prompt}
  (cached, aux), (full, _) = both_paths(model, params, inputs, temperature=1.0)
  np.testing.assert_array_equal(cached[:, :4], prompt)
  np.testing.assert_array_equal(cached, full)
  assert np.all(np.asarray(aux["log_probs"])[:, :4] == 0)
  assert np.all(np.asarray(aux["log_probs"])[:, 4:] < 0)


def test_guidance_scale_one_equals_conditional_sampling(batch):
  model = lm_fixtures.tiny_model()
  params = params_for(model, batch)
  inputs = {"prefix_tokens": batch["prefix_tokens"]}
  plain, plain_aux = model.predict_batch_with_aux(params, inputs, jax.random.key(3),
                                                  max_decode_length=LENGTH)
  guided, guided_aux = model.predict_batch_with_aux(params, inputs, jax.random.key(3),
                                                    max_decode_length=LENGTH,
                                                    guidance_scale=1.0)
  np.testing.assert_array_equal(plain, guided)
  np.testing.assert_allclose(plain_aux["log_probs"], guided_aux["log_probs"], rtol=1e-5,
                             atol=1e-6)
  # A strong scale really changes the distribution.
  strong, _ = model.predict_batch_with_aux(params, inputs, jax.random.key(3),
                                           max_decode_length=LENGTH, guidance_scale=8.0)
  assert not np.array_equal(plain, strong)


def test_new_sampling_values_reuse_the_compiled_sampler(batch):
  """Temperature, top_p and guidance scale are traced: other values run the same program,
  and they do change the samples."""
  model = lm_fixtures.tiny_model()
  params = params_for(model, batch)
  inputs = {"prefix_tokens": batch["prefix_tokens"]}
  sample = lambda **kw: model.predict_batch_with_aux(params, inputs, jax.random.key(5),
                                                    max_decode_length=LENGTH, **kw)
  compiled = type(model)._sample_jit._cache_size  # pylint: disable=protected-access
  first, first_aux = sample(temperature=0.7, top_p=0.9, guidance_scale=2.0)
  programs = compiled()
  second, second_aux = sample(temperature=1.5, top_p=0.95, guidance_scale=4.0)
  assert compiled() == programs
  assert not np.array_equal(first, second)
  assert not np.allclose(first_aux["log_probs"], second_aux["log_probs"])
  # What the settings switch off is static: greedy, no nucleus, no guidance compile anew.
  sample(temperature=0.0)
  assert compiled() == programs + 1


def test_traced_settings_sample_like_python_ones():
  logits = jnp.log(jnp.array([0.6, 0.3, 0.1 - 1e-9, 1e-9]))[None].repeat(20000, axis=0)
  jitted = jax.jit(decoding.choose_tokens, static_argnums=3)
  key = jax.random.key(0)
  np.testing.assert_array_equal(jitted(key, logits, 0.5, 0, 1.0),
                                decoding.choose_tokens(key, logits, 0.5, 0, 1.0))
  np.testing.assert_array_equal(jitted(key, logits, 0.5, 0, 0.7),
                                decoding.choose_tokens(key, logits, 0.5, 0, 0.7))
  # A traced temperature of 0 is greedy.
  np.testing.assert_array_equal(jitted(key, logits, 0.0, 0, 1.0), np.zeros(20000))
  # A traced top_p of 1 keeps every id, however unlikely.
  kept = jax.jit(decoding.filter_logits, static_argnums=1)(logits[:1], 0, 1.0) > -1e9
  assert np.all(np.asarray(kept))


def test_guidance_formula():
  cond = jnp.array([[1.0, 2.0, 3.0]])
  uncond = jnp.array([[0.0, 2.0, 5.0]])
  out = decoding.apply_guidance(jnp.concatenate([cond, uncond]), 3.0)
  np.testing.assert_allclose(out, uncond + 3.0 * (cond - uncond))


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
  kept = lambda x: np.asarray(x[0] > -1e9)
  np.testing.assert_array_equal(kept(decoding.filter_logits(logits, top_k=2)),
                                [True, True, False, False])
  # Nucleus: the smallest set with mass >= p.
  np.testing.assert_array_equal(kept(decoding.filter_logits(logits, top_p=0.5)),
                                [True, False, False, False])
  np.testing.assert_array_equal(kept(decoding.filter_logits(logits, top_p=0.7)),
                                [True, True, False, False])
  np.testing.assert_array_equal(kept(decoding.filter_logits(logits, top_p=0.8)),
                                [True, True, True, False])


def test_temperature_sampling_matches_the_tempered_distribution():
  logits = jnp.log(jnp.array([0.6, 0.3, 0.1]))[None].repeat(20000, axis=0)
  tokens = decoding.choose_tokens(jax.random.key(0), logits, 0.5, 0, 1.0)
  expected = np.array([0.6, 0.3, 0.1]) ** 2
  expected /= expected.sum()
  freq = np.bincount(np.asarray(tokens), minlength=3) / tokens.shape[0]
  np.testing.assert_allclose(freq, expected, atol=0.015)


def test_trained_model_generates_the_arpeggios():
  """A short real training run, then greedy decoding reproduces most target sequences."""
  batches = lm_fixtures.batches(250, batch_size=16, seed=1)
  model = lm_fixtures.tiny_model(learning_rate=3e-3, num_heads=4, emb_dim=64, mlp_dim=128)
  partitioner = lm_fixtures.single_device_partitioner()
  trainer = trainer_lib.Trainer(model, partitioner)
  state = trainer.create_state(lm_fixtures.input_shapes(batches[0]))
  for b in batches:
    state, _ = trainer.train_step(state, partitioner.shard_batch(b))
  test = lm_fixtures.batches(1, batch_size=32, seed=99)[0]
  tokens = np.asarray(model.predict_batch(state.params, {"prefix_tokens": test["prefix_tokens"]},
                                          None, max_decode_length=16, temperature=0.0))
  expected = synthetic.expected_targets(test["prefix_tokens"], 16)
  token_accuracy = np.mean(tokens == expected)
  assert token_accuracy > 0.8, token_accuracy
