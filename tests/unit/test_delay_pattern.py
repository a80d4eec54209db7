"""The delay pattern: layout, causality in the flattened order, sampling, a trained model."""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from musiclm_jax.lm import decoder_lm, delay_pattern, models as lm_models
from musiclm_jax.training import trainer as trainer_lib
from tests import lm_fixtures

LEVELS, CODES, PREFIX_CODES, PREFIX_LENGTH = 3, 8, 12, 2


def delayed_model(learning_rate=1e-3, **overrides) -> lm_models.DecoderOnlyLMModel:
  kw = dict(target_vocab_size=LEVELS * CODES, prefix_vocab_size=PREFIX_CODES, num_layers=2,
            num_heads=2, head_dim=16, emb_dim=32, mlp_dim=64, max_length=64,
            parallel_levels=LEVELS)
  kw.update(overrides)
  return lm_models.DecoderOnlyLMModel(decoder_lm.DecoderOnlyLM(decoder_lm.DecoderConfig(**kw)),
                                      optax.adam(learning_rate))


def frames_batch(prefix: np.ndarray, frames: int) -> dict:
  """A residual-VQ-like task: level 0 counts up from the prefix, level 1 is a function of
  the same frame's level 0, level 2 of the same frame's level 1 and the previous frame's
  level 0. Returns a PrefixLMFeatureConverter-style batch of flattened frames."""
  start = prefix[:, :1] * 5 + prefix[:, 1:]
  level0 = (start + np.arange(frames)[None]) % CODES
  level1 = (level0 * 3 + 1) % CODES
  level2 = (level1 + np.roll(level0, 1, axis=1)) % CODES
  codes = np.stack([level0, level1, level2], axis=-1) + np.arange(LEVELS) * CODES
  targets = codes.reshape(len(prefix), -1).astype(np.int32)
  bos = np.full((len(prefix), 1), LEVELS * CODES, np.int32)
  return {"prefix_tokens": prefix.astype(np.int32),
          "decoder_input_tokens": np.concatenate([bos, targets[:, :-1]], axis=1),
          "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones_like(targets)}


@pytest.fixture(scope="module")
def batch():
  prefix = np.random.default_rng(0).integers(0, PREFIX_CODES, (4, PREFIX_LENGTH))
  return frames_batch(prefix, frames=5)


def params_for(model, batch):
  variables = model.get_initial_variables(jax.random.key(0), lm_fixtures.input_shapes(batch))
  return nn.meta.unbox(variables)["params"]


def test_steps_hold_level_k_k_steps_late():
  frames = np.arange(1, 13).reshape(1, 4, 3)        # c[t, k] = 3t + k + 1
  steps = np.asarray(delay_pattern.delay(frames))
  e = delay_pattern.EMPTY
  np.testing.assert_array_equal(steps[0], [[1, e, e], [4, 2, e], [7, 5, 3], [10, 8, 6],
                                           [e, 11, 9], [e, e, 12]])
  np.testing.assert_array_equal(delay_pattern.undelay(steps), frames)
  inputs = np.asarray(delay_pattern.step_inputs(frames.reshape(1, 12), 3, bos_id=99))
  np.testing.assert_array_equal(inputs[0, 0], [99, e, e])
  np.testing.assert_array_equal(inputs[0, 1:], steps[0, :-1])
  with pytest.raises(ValueError, match="whole frames"):
    delay_pattern.step_inputs(np.zeros((1, 10), np.int32), 3, bos_id=99)


def test_a_target_sees_exactly_the_tokens_emitted_at_earlier_steps(batch):
  """Flattened target (t, k) is emitted at step t + k: changing a target changes the
  logits of the targets emitted after it, and of no other."""
  model = delayed_model()
  params = params_for(model, batch)
  logits = np.asarray(model._logits(params, batch, None))  # pylint: disable=protected-access
  targets = batch["decoder_target_tokens"]
  length = targets.shape[1]
  assert logits.shape == targets.shape + (model.config.padded_target_vocab,)
  step = np.arange(length) // LEVELS + np.arange(length) % LEVELS
  for changed in range(length):
    other = targets.copy()
    other[:, changed] = (other[:, changed] + 1 - changed % LEVELS * CODES) % CODES + (
        changed % LEVELS * CODES)
    shifted = np.concatenate([batch["decoder_input_tokens"][:, :1], other[:, :-1]], axis=1)
    new = np.asarray(model._logits(  # pylint: disable=protected-access
        params, dict(batch, decoder_input_tokens=shifted), None))
    moved = ~np.all(np.isclose(new, logits, atol=1e-5), axis=(0, 2))
    np.testing.assert_array_equal(moved, step > step[changed], err_msg=f"target {changed}")
  # Each position predicts its own level's ids only.
  level_of_id = np.arange(logits.shape[-1]) // CODES
  allowed = level_of_id[None, :] == (np.arange(length) % LEVELS)[:, None]
  assert np.all(logits[:, ~allowed] <= -1e9)


def test_score_matches_loss_and_the_model_has_fewer_positions(batch):
  model = delayed_model()
  params = params_for(model, batch)
  loss, metrics = model.loss_fn(params, batch, None)
  scores = model.score_batch(params, batch)
  np.testing.assert_allclose(-np.sum(scores) / float(metrics["weight_sum"]), float(loss),
                             rtol=1e-5)
  step_inputs = model._step_inputs(batch["decoder_input_tokens"])  # pylint: disable=protected-access
  assert step_inputs.shape == (4, 5 + LEVELS - 1, LEVELS)


@pytest.mark.parametrize("decoder_params", [
    {"temperature": 0.0},
    {"temperature": 1.0},
    {"temperature": 0.9, "top_k": 3, "guidance_scale": 3.0},
])
def test_cached_delayed_decoding_equals_full_recomputation(batch, decoder_params):
  model = delayed_model()
  params = params_for(model, batch)
  prompt = batch["decoder_target_tokens"][:, :4]          # a frame and a third
  inputs = {"prefix_tokens": batch["prefix_tokens"], "decoder_prompt_tokens": prompt}
  run = lambda cache: model.predict_batch_with_aux(
      params, inputs, jax.random.key(7), max_decode_length=15, use_cache=cache,
      level_codes=CODES, levels_per_frame=LEVELS, **decoder_params)
  (cached, cached_aux), (full, full_aux) = run(True), run(False)
  np.testing.assert_array_equal(cached, full)
  np.testing.assert_allclose(cached_aux["log_probs"], full_aux["log_probs"], rtol=1e-4,
                             atol=1e-5)
  cached = np.asarray(cached)
  np.testing.assert_array_equal(cached[:, :4], prompt)
  assert np.all(np.asarray(cached_aux["log_probs"])[:, :4] == 0)
  assert np.all(np.asarray(cached_aux["log_probs"])[:, 4:] <= 0)
  np.testing.assert_array_equal(cached.reshape(4, 5, LEVELS) // CODES,
                                np.broadcast_to(np.arange(LEVELS), (4, 5, LEVELS)))


def test_bad_delayed_settings_are_named(batch):
  with pytest.raises(ValueError, match="parallel_levels=5 must be 0 or divide"):
    decoder_lm.DecoderConfig(target_vocab_size=24, parallel_levels=5)
  model = delayed_model()
  with pytest.raises(ValueError, match="loss_chunk_length needs one position per target"):
    lm_models.DecoderOnlyLMModel(model.module, optax.adam(1e-3), loss_chunk_length=8)
  params = params_for(model, batch)
  inputs = {"prefix_tokens": batch["prefix_tokens"]}
  with pytest.raises(ValueError, match="do not match the model's 3 parallel levels"):
    model.predict_batch(params, inputs, jax.random.key(0), max_decode_length=15,
                        level_codes=CODES, levels_per_frame=2)
  with pytest.raises(ValueError, match="whole frames of 3 levels"):
    model.predict_batch(params, inputs, jax.random.key(0), max_decode_length=14)


def test_trained_delayed_model_generates_the_frames():
  """A short real training run; greedy decoding then rebuilds the frames, whose finer
  levels depend on the same frame's coarser ones and on the previous frame."""
  rng = np.random.default_rng(1)
  model = delayed_model(learning_rate=3e-3, num_heads=4, emb_dim=64, mlp_dim=128)
  partitioner = lm_fixtures.single_device_partitioner()
  trainer = trainer_lib.Trainer(model, partitioner)
  train = [frames_batch(rng.integers(0, PREFIX_CODES, (16, PREFIX_LENGTH)), 6)
           for _ in range(300)]
  state = trainer.create_state(lm_fixtures.input_shapes(train[0]))
  for b in train:
    state, _ = trainer.train_step(state, partitioner.shard_batch(b))
  test = frames_batch(np.random.default_rng(99).integers(0, PREFIX_CODES,
                                                         (32, PREFIX_LENGTH)), 6)
  tokens = np.asarray(model.predict_batch(state.params,
                                          {"prefix_tokens": test["prefix_tokens"]}, None,
                                          max_decode_length=18, temperature=0.0))
  # The first frame's level 2 reads a frame that does not exist (np.roll): left out.
  accuracy = np.mean((tokens == test["decoder_target_tokens"])[:, 3:])
  assert accuracy > 0.8, accuracy


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("guidance_scale", [None, 2.0])
def test_teacher_forced_logits_are_what_the_sampler_drew_from(batch, parallel, guidance_scale):
  """Fed the tokens a sampler drew, teacher forcing gives each its (guided) log-probability
  as the sampler computed it: the logits a position would see at generation."""
  model = delayed_model(parallel_levels=LEVELS if parallel else 0)
  params = params_for(model, batch)
  length = batch["decoder_target_tokens"].shape[1]
  drawn, aux = model.predict_batch_with_aux(
      params, {"prefix_tokens": batch["prefix_tokens"]}, jax.random.key(3),
      max_decode_length=length, guidance_scale=guidance_scale, level_codes=CODES,
      levels_per_frame=LEVELS)
  bos = np.full((len(drawn), 1), model.config.bos_id, np.int32)
  logits = model.teacher_forced_logits(
      params, {"prefix_tokens": batch["prefix_tokens"],
               "decoder_input_tokens": np.concatenate([bos, drawn[:, :-1]], axis=1)},
      guidance_scale)
  if not parallel:   # the sampler keeps each position to its level's ids
    level = np.arange(length) % LEVELS
    logits = np.where(np.arange(logits.shape[-1])[None, None] // CODES == level[None, :, None],
                      logits, -1e10)
  log_probs = np.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                 np.asarray(drawn)[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(log_probs, aux["log_probs"], rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="guidance_scale needs a conditional model"):
    unconditional = delayed_model(prefix_vocab_size=0)
    unconditional.teacher_forced_logits(
        params_for(unconditional, batch),
        {"decoder_input_tokens": batch["decoder_input_tokens"]}, 2.0)
