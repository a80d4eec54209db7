"""w2v-BERT: span masking, conformer blocks, losses, and self-supervised training on real audio."""

import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax import configurables, gin_config
from musiclm_jax.layers import conformer
from musiclm_jax.training import partitioning
from musiclm_jax.w2v_bert import model as model_lib
from tests import harness
from tests import w2v_bert_fixtures as fx


def _runs(row: np.ndarray):
  """(start, length) of each maximal run of True in a bool row."""
  padded = np.concatenate([[False], row, [False]]).astype(np.int8)
  edges = np.flatnonzero(np.diff(padded))
  return list(zip(edges[::2], edges[1::2] - edges[::2]))


def test_span_mask_statistics_and_contiguity():
  p, span, length = 0.065, 10, 400  # the paper's p and M
  mask = np.asarray(model_lib.span_mask(jax.random.key(0), (1024, length), p, span,
                                        ensure_one_span=False))
  expected = model_lib.expected_mask_fraction(p, span, length)
  assert 0.47 < model_lib.expected_mask_fraction(p, span, 10**6) < 0.50  # 1 - 0.935^10
  assert abs(mask.mean() - expected) < 0.01, (mask.mean(), expected)  # ~5 sigma
  # Per frame: the first frames can only be covered by spans starting at or before them.
  first = 1.0 - (1.0 - p) ** np.arange(1, span + 1)
  np.testing.assert_allclose(mask[:, :span].mean(axis=0), first, atol=0.07)
  for row in mask:
    for start, run in _runs(row):
      # Spans are contiguous and whole: a run is one span or several merged ones.
      assert run >= span, (start, run)
  # Deterministic in the rng; other rngs, other masks.
  again = model_lib.span_mask(jax.random.key(0), (1024, length), p, span,
                              ensure_one_span=False)
  np.testing.assert_array_equal(mask, again)
  assert not np.array_equal(mask, model_lib.span_mask(jax.random.key(1), (1024, length), p,
                                                      span, ensure_one_span=False))
  # Short clips: every clip still gets at least one whole span.
  short = np.asarray(model_lib.span_mask(jax.random.key(2), (256, 20), 0.02, 5))
  assert short.sum(axis=1).min() >= 5
  with pytest.raises(ValueError, match="span_length"):
    model_lib.span_mask(jax.random.key(0), (1, 4), p, span)


def test_conformer_block_is_bidirectional_with_named_params():
  block = conformer.ConformerBlock(num_heads=2, head_dim=8, mlp_dim=32, conv_kernel_size=5)
  x = jax.random.normal(jax.random.key(0), (2, 12, 16))
  positions = jnp.arange(12)
  variables = block.init(jax.random.key(1), x, positions, None)
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      variables, is_leaf=lambda l: isinstance(l, nn.LogicallyPartitioned))[0]:
    assert isinstance(leaf, nn.LogicallyPartitioned), path
    assert len(leaf.names) == leaf.value.ndim, path
  variables = nn.meta.unbox(variables)
  y = block.apply(variables, x, positions, None)
  assert y.shape == x.shape and np.all(np.isfinite(y))
  # The last frame changes the first one's output: an encoder sees the future.
  y2 = block.apply(variables, x.at[:, -1].add(1.0), positions, None)
  assert float(jnp.max(jnp.abs(y2[:, 0] - y[:, 0]))) > 1e-4
  # Final layer norm: zero mean, unit variance per frame.
  np.testing.assert_allclose(np.mean(y, -1), 0.0, atol=1e-4)


def test_layer_scale_lets_a_random_stack_keep_its_input():
  """Each block ends in a layer norm over the input plus four unit-scale branches: six
  random blocks leave an output nearly orthogonal to the input. LayerScale 0.1 starts them
  near the identity (and adds a per-channel scale per branch; None adds nothing)."""
  x = jax.random.normal(jax.random.key(1), (2, 50, 64))
  positions = jnp.arange(50)
  normed = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
  cosines = {}
  for layer_scale in (None, 0.1):
    stack = conformer.ConformerStack(6, 2, 32, 128, 7, layer_scale_init=layer_scale)
    variables = stack.init(jax.random.key(0), x, positions, None)
    y = stack.apply(variables, x, positions, None)
    cosines[layer_scale] = float(jnp.mean(jnp.sum(normed * y, -1) / jnp.linalg.norm(
        normed, axis=-1) / jnp.linalg.norm(y, axis=-1)))
    scales = [k for k in nn.meta.unbox(variables["params"])["layers_0"] if "layer_scale" in k]
    assert len(scales) == (0 if layer_scale is None else 4), scales
  assert cosines[None] < 0.3 and cosines[0.1] > 0.95, cosines


@pytest.mark.parametrize("taps", [15, 4, 1])
def test_depthwise_conv_matches_grouped_lax_conv(taps):
  """The conformer's depthwise conv (shifted sums) is XLA's grouped conv with the centred
  padding, in value and in both gradients."""
  x = jax.random.normal(jax.random.key(0), (2, 11, 6))
  kernel = jax.random.normal(jax.random.key(1), (taps, 6))
  left = taps // 2
  lax_conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k[:, None, :], (1,), [(left, taps - 1 - left)],
      dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=6)
  ours = lambda x, k: conformer.depthwise_conv1d(x, k, left)
  np.testing.assert_allclose(ours(x, kernel), lax_conv(x, kernel), rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(2), x.shape)
  grads = lambda f: jax.grad(lambda x, k: jnp.sum(f(x, k) * cotangent), argnums=(0, 1))(
      x, kernel)
  for g_ours, g_lax in zip(grads(ours), grads(lax_conv)):
    np.testing.assert_allclose(g_ours, g_lax, rtol=1e-4, atol=1e-4)


def test_contrastive_negatives_and_losses():
  mask = jnp.array([[True, False, True, True, False, True]])
  selected = np.asarray(model_lib.sample_negatives(jax.random.key(0), mask, 3)[0])
  for t in range(6):
    picked = np.flatnonzero(selected[t])
    assert t not in picked and all(mask[0, picked])
    assert len(picked) == min(3, int(mask.sum()) - int(mask[0, t]))
  # Uniform over the candidates: every masked frame is drawn about equally often.
  many = np.asarray(model_lib.sample_negatives(jax.random.key(1), jnp.ones((400, 8), bool), 3))
  frequency = many[:, 0].mean(axis=0)  # distractors of query frame 0
  assert frequency[0] == 0 and np.all(np.abs(frequency[1:] - 3 / 7) < 0.08), frequency
  # Context equal to its own target, distinct codes: the positive always wins.
  targets = jax.random.normal(jax.random.key(1), (1, 6, 8))
  codes = jnp.arange(6)[None, :, None]
  loss, accuracy = model_lib.contrastive_loss(targets, targets, mask, codes,
                                              jax.random.key(2), 3, 0.1)
  assert float(accuracy) == 1.0 and float(loss) < 1.0
  # A distractor with the positive's code is the positive: it is not counted against it.
  same = jnp.zeros((1, 6, 1), jnp.int32)
  loss_same, accuracy_same = model_lib.contrastive_loss(targets, targets[:, ::-1], mask, same,
                                                        jax.random.key(2), 3, 0.1)
  assert abs(float(loss_same)) < 1e-6
  assert float(accuracy_same) == 0.0  # no frame has a distractor left: nothing was scored
  uniform = jnp.zeros((2, 5, 2, 16))
  diversity, perplexity = model_lib.diversity_loss(uniform)
  assert abs(float(diversity)) < 1e-6 and abs(float(perplexity) - 32) < 1e-3
  peaked = jnp.zeros((2, 5, 1, 16)).at[..., 3].set(50.0)
  assert float(model_lib.diversity_loss(peaked)[0]) > 0.9
  # Flat logits and confident, diverse codes both keep the diversity loss near 0; the
  # per-frame and argmax perplexities tell them apart.
  argmax_flat, frame_flat = model_lib.code_perplexities(uniform.at[..., 0].add(1e-3))
  assert abs(float(frame_flat) - 32) < 0.1 and abs(float(argmax_flat) - 2) < 1e-3
  diverse = 50.0 * jax.nn.one_hot(jnp.arange(16).reshape(2, 8, 1) % 16, 16)
  argmax_diverse, frame_diverse = model_lib.code_perplexities(diverse)
  assert abs(float(argmax_diverse) - 16) < 1e-3 and float(frame_diverse) < 1.01
  assert np.allclose([float(v) for v in model_lib.code_perplexities(peaked)], 1.0)
  logits = jnp.zeros((1, 6, 1, 4)).at[..., 2].set(10.0)
  mlm, mlm_accuracy = model_lib.masked_prediction_loss(logits, jnp.full((1, 6, 1), 2), mask)
  assert float(mlm) < 1e-3 and float(mlm_accuracy) == 1.0


def test_loss_finite_and_decreasing_on_real_audio():
  clips = fx.real_clips(4)
  model = fx.tiny_model()
  _, state, history = harness.train_on_batch(model, clips, 12)
  losses = [h["loss"] for h in history]
  assert all(np.isfinite(v) for h in history for v in h.values()), history[-1]
  assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
  last = {k: v / history[-1]["weight_sum"] for k, v in history[-1].items() if k.endswith("_sum")}
  assert 0.0 < last["masked_fraction_sum"] < 1.0
  assert last["code_perplexity_sum"] > 2.0  # the diversity term keeps codes in use
  assert last["gumbel_temperature_sum"] < model.config.gumbel_temperature_max
  assert int(state.flax_mutables[model_lib.STATE]["step"]) == 12


def test_input_features_keep_held_notes_and_ignore_gain():
  """The log-mel normalisation keeps a held note's spectrum (removing each band's mean, as
  speech front ends do, leaves a held note nothing but its attack: the pitch is lost) and
  makes the input independent of gain."""
  from musiclm_jax.music import corpus, render
  soundfont = render.soundfont_path("timgm6mb-soundfont")
  piano = render.Performance(programs=(0,), bpm=120.0, velocity=90)
  notes = np.stack([render.render([corpus.Note(0.0, 4.0, pitch, 0)], piano, 1.0,
                                  fx.SAMPLE_RATE, soundfont) for pitch in (60, 67)])  # C4, G4
  log_mel = np.asarray(model_lib.normalized_log_mel(np.concatenate([notes, 0.5 * notes]),
                                                    fx.tiny_config()))
  assert log_mel.shape == (4, 100, fx.tiny_config().num_mels)
  profiles = log_mel.mean(axis=1)  # each clip's mean spectrum
  assert np.all(profiles.std(axis=1) > 0.5), profiles.std(axis=1)
  assert np.mean(np.abs(profiles[0] - profiles[1])) > 0.2  # C4 and G4 differ
  gain_change = np.abs(log_mel[:2] - log_mel[2:])  # -6 dB: equal but for the log floor
  assert gain_change.mean() < 0.01 and gain_change.max() < 0.2, gain_change.max()
  with pytest.raises(ValueError, match="at least 640 samples"):
    model_lib.normalized_log_mel(np.zeros((1, 600), np.float32), fx.tiny_config())


def test_embed_rate_layers_eval_and_quantizer_ids():
  cfg = fx.tiny_config()
  model = fx.tiny_model()
  params = fx.tiny_params()
  audio = fx.real_clips(2, 16000 + 500)  # 1 s and a part frame
  mutables = {model_lib.STATE: {"step": jnp.asarray(5)}}

  @jax.jit
  def run(params, audio):
    evals = [model.eval_fn_with_mutables(params, mutables, {"audio": audio})[1]
             for _ in range(2)]
    return (model.embed(params, audio, 0), model.embed(params, audio, 1),
            model.predict_batch(params, {"audio": audio}), evals,
            model.score_batch(params, {"audio": audio}))

  emb0, emb1, ids, evals, scores = run(params, audio)
  assert cfg.frame_rate == 25 and cfg.hop_length == 640
  for emb in (emb0, emb1):
    assert emb.shape == (2, 25, cfg.emb_dim) and np.all(np.isfinite(emb))
  assert not np.allclose(emb0, emb1)
  with pytest.raises(ValueError, match="layer"):
    model.embed(params, audio, cfg.num_mlm_layers + 1)
  assert ids.shape == (2, 25, 1) and ids.dtype == jnp.int32
  assert int(ids.min()) >= 0 and int(ids.max()) < cfg.codebook_size
  # Evaluation is deterministic (fixed mask, no dropout or Gumbel noise) and finite.
  assert float(evals[0]["loss_sum"]) == float(evals[1]["loss_sum"])
  assert np.isfinite(float(evals[0]["loss_sum"])) and scores.shape == (2,)
  assert np.all(np.asarray(scores) < 0)


def _quantizer_codes(config: model_lib.W2vBertConfig, audio: np.ndarray):
  """(Gumbel-sampled codes at temperature 2, argmax codes) of a fresh network: int [B, T]."""
  network = model_lib.W2vBert(config)
  mask = jnp.zeros((audio.shape[0], config.num_frames(audio.shape[1])), bool)

  @jax.jit
  def run(rng):
    variables = network.init(rng, audio, mask)
    def codes(module, wave, sample):
      features = module.feature_encoder(wave, True)
      return module.quantizer(features, 2.0, sample=sample)[1][..., 0]
    sampled = network.apply(variables, audio, True, method=codes, rngs={"gumbel": rng})
    return sampled, network.apply(variables, audio, False, method=codes)

  return run(jax.random.key(0))


def test_quantizer_targets_follow_the_input_from_initialisation():
  """wav2vec 2.0's N(0, 1) init of the quantizer's logits: a training (Gumbel) sample is
  mostly the argmax code, so the contrastive targets carry the input from step 0. With a
  fan-in init (logits of unit scale) the samples are noise: the targets are unpredictable
  and the contrastive task cannot start."""
  audio = fx.real_clips(8)
  sampled, argmax = _quantizer_codes(fx.tiny_config(), audio)
  assert float(np.mean(np.asarray(sampled) == np.asarray(argmax))) > 0.6
  assert len(np.unique(np.asarray(argmax))) >= 8  # the ids vary with the input
  fan_in = fx.tiny_config(quantizer_logit_init_std=fx.tiny_config().emb_dim ** -0.5)
  sampled, argmax = _quantizer_codes(fan_in, audio)
  assert float(np.mean(np.asarray(sampled) == np.asarray(argmax))) < 0.3
  with pytest.raises(ValueError, match="quantizer_logit_init_std"):
    fx.tiny_config(quantizer_logit_init_std=0.0)


def test_random_projection_targets_are_frozen_functions_of_the_input():
  """BEST-RQ targets: the same codes under any parameters (nothing to train or collapse),
  varying with the music, nearly unchanged at half the gain (the log-mel is normalised per
  clip), and no quantizer parameters in the network."""
  cfg = fx.tiny_config(target_quantizer="random_projection")
  model = fx.tiny_model(target_quantizer="random_projection")
  audio = fx.real_clips(4)
  shapes = {"audio": audio.shape}
  variables = [model.get_initial_variables(jax.random.key(seed), shapes) for seed in (0, 1)]
  params = [nn.meta.unbox(v["params"]) for v in variables]
  assert "quantizer" not in params[0]
  codes = [np.asarray(model.predict_batch(p, {"audio": audio})) for p in params]
  np.testing.assert_array_equal(codes[0], codes[1])
  assert codes[0].shape == (4, cfg.num_frames(audio.shape[1]), 1)
  assert len(np.unique(codes[0])) >= 8
  quiet = np.asarray(model.predict_batch(params[0], {"audio": 0.5 * audio}))
  assert np.mean(quiet == codes[0]) > 0.9
  mutables = {model_lib.STATE: variables[0][model_lib.STATE]}
  loss = model.loss_fn_with_mutables(params[0], mutables, {"audio": audio},
                                     jax.random.key(2))[0]
  assert np.isfinite(float(loss))
  with pytest.raises(ValueError, match="codebook_groups"):
    fx.tiny_config(target_quantizer="random_projection", codebook_groups=2,
                   codevector_dim=16)
  with pytest.raises(ValueError, match="target_quantizer"):
    fx.tiny_config(target_quantizer="kmeans")
  with pytest.raises(ValueError, match="random_projection_dim"):
    fx.tiny_config(target_quantizer="random_projection", random_projection_dim=0)


def test_feature_grad_scale_scales_only_the_feature_encoders_gradient():
  """wav2vec 2.0's feature_grad_mult: the same loss, the feature encoder's gradient times
  the scale, every other parameter's gradient unchanged."""
  audio = jnp.asarray(fx.real_clips(2))
  params = fx.tiny_params()
  def grads(scale):
    model = fx.tiny_model(feature_grad_scale=scale)
    losses = model._losses  # pylint: disable=protected-access
    loss_fn = lambda p: losses(p, audio, jax.random.key(3), jnp.int32(0))[0]
    return jax.jit(jax.value_and_grad(loss_fn))(params)
  (loss, full), (scaled_loss, scaled) = grads(1.0), grads(0.1)
  np.testing.assert_allclose(scaled_loss, loss, rtol=1e-6)
  for name in full:
    for (path, g), s in zip(jax.tree_util.tree_flatten_with_path(full[name])[0],
                            jax.tree.leaves(scaled[name])):
      expected = 0.1 * g if name == "feature_encoder" else g
      np.testing.assert_allclose(s, expected, rtol=1e-4, atol=1e-7,
                                 err_msg=f"{name}{jax.tree_util.keystr(path)}")
  assert float(jnp.abs(full["feature_encoder"]["projection"]["kernel"]).max()) > 0
  with pytest.raises(ValueError, match="feature_grad_scale"):
    fx.tiny_config(feature_grad_scale=0.0)


def test_learns_the_contrastive_and_masked_prediction_tasks():
  """300 steps on 8 fixed 2 s real clips (new masks every step): both tasks rise far above
  where they start. (With the fan-in quantizer init both stayed at chance here.)"""
  model = fx.tiny_model(mask_prob=0.065, mask_length=5, num_negatives=20)
  _, _, history = harness.train_on_batch(model, fx.real_clips(8, 32000), 300)
  def mean_of(name, steps):
    return float(np.mean([history[i][f"{name}_sum"] / history[i]["weight_sum"]
                          for i in steps]))
  first, last = range(30), range(270, 300)
  for name in ("contrastive_accuracy", "mlm_accuracy"):
    assert mean_of(name, last) > 0.25, (name, mean_of(name, last))
    assert mean_of(name, last) > 2 * mean_of(name, first), (name, mean_of(name, first))


def test_semitone_reconstruction_is_optional_and_learned():
  """reconstruction_weight 0 (the paper's objective) builds no head, so its checkpoints keep
  their parameters; > 0 adds the head and a loss at masked frames that falls in training."""
  clips = fx.real_clips(4, 32000)
  targets = np.asarray(model_lib.semitone_targets(clips, fx.tiny_config()))
  assert targets.shape == (4, 50, 84)
  np.testing.assert_allclose(np.sqrt(np.mean(targets ** 2, axis=(1, 2))), 1.0, rtol=1e-3)
  shapes = lambda model: jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.key(0), {"audio": (1, 32000)}))["params"]
  assert "reconstruction_head" not in shapes(fx.tiny_model())
  model = fx.tiny_model(reconstruction_weight=1.0)
  assert "reconstruction_head" in shapes(model)
  _, _, history = harness.train_on_batch(model, clips, 40)
  losses = [h["reconstruction_loss_sum"] / h["weight_sum"] for h in history]
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
  with pytest.raises(ValueError, match="Nyquist"):
    fx.tiny_config(reconstruction_weight=1.0, reconstruction_bins=96)
  with pytest.raises(ValueError, match="reconstruction_fmin"):
    fx.tiny_config(reconstruction_weight=1.0, reconstruction_fmin=0.0)
  with pytest.raises(ValueError, match="layer_scale_init"):
    fx.tiny_config(layer_scale_init=0.0)


def test_every_parameter_has_logical_axes():
  model = fx.tiny_model()
  boxed = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.key(0), {"audio": (2, fx.CLIP_SAMPLES)})["params"])
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda l: isinstance(l, nn.LogicallyPartitioned))[0]
  assert len(leaves) > 30
  for path, leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), jax.tree_util.keystr(path)
    assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)


def test_gin_sizes():
  configurables.import_configurables()
  counts = {}
  for size in ("tiny", "paper"):
    gin.clear_config()
    gin_config.parse_gin_flags([f"w2v_bert/{size}.gin"], finalize=False)
    config = model_lib.W2vBertConfig()
    counts[size] = model_lib.count_parameters(config)
  gin.clear_config()
  assert counts["tiny"] < 100_000
  # The paper's w2v-BERT XL: about 600M parameters.
  assert 550e6 < counts["paper"] < 650e6, counts
  assert os.path.isfile(os.path.join(gin_config.configs_dir(), "runs", "w2v_bert.gin"))


def test_training_on_8_devices_equals_one_device():
  """data=4 x model=2: the same losses, parameters and quantizer state as one device (masks
  and negatives come from the same per-step rng whatever the mesh)."""
  if jax.device_count() < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
  clips = fx.real_clips(8)
  model = fx.tiny_model()
  _, initial, _ = harness.train_on_batch(model, clips, 0)
  _, single, single_history = harness.train_on_batch(model, clips, 3)
  mesh = partitioning.Partitioner(num_partitions=2)
  assert dict(mesh.mesh.shape) == {"data": 4, "fsdp": 1, "model": 2}
  _, sharded, sharded_history = harness.train_on_batch(model, clips, 3,
                                                           partitioner=mesh)
  np.testing.assert_allclose([h["loss"] for h in sharded_history],
                             [h["loss"] for h in single_history], rtol=1e-5)
  # Adam divides by the gradients' running RMS, so parameters whose gradients are ~0 move by
  # ~lr on either mesh in directions set by round-off: an elementwise tolerance would test
  # round-off. Instead each tensor's mesh difference must be tiny next to how far training
  # moved it.
  for (path, a), b, start in zip(
      jax.tree_util.tree_leaves_with_path(jax.device_get(single.params)),
      jax.tree.leaves(jax.device_get(sharded.params)),
      jax.tree.leaves(jax.device_get(initial.params))):
    moved = np.linalg.norm(a - start)
    assert moved > 0, jax.tree_util.keystr(path)
    assert np.linalg.norm(a - b) < 2e-3 * moved, jax.tree_util.keystr(path)
  harness.assert_trees_close(jax.device_get(sharded.flax_mutables),
                             jax.device_get(single.flax_mutables), rtol=1e-5, atol=1e-6)
  specs = [tuple(x.sharding.spec) for x in jax.tree.leaves(sharded.params)]
  assert sum("model" in spec for spec in specs) >= len(specs) // 3, specs
