"""The decoder-only LM: layers, loss, scan/remat equivalence, mixed precision."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from musiclm_jax.layers import relative_position, rotary
from musiclm_jax.lm import decoder_lm, models as lm_models
from tests import lm_fixtures


@pytest.fixture(scope="module")
def batch():
  return lm_fixtures.batches(1)[0]


def init_params(model, batch, seed=0):
  variables = model.get_initial_variables(jax.random.key(seed), lm_fixtures.input_shapes(batch))
  return nn.meta.unbox(variables)["params"]


def test_relative_position_buckets_follow_t5():
  distance = np.array([0, 1, 15, 16, 30, 64, 127, 128, 1000])
  buckets = relative_position.relative_position_bucket(
      -jnp.asarray(distance), bidirectional=False, num_buckets=32, max_distance=128)
  buckets = np.asarray(buckets)
  np.testing.assert_array_equal(buckets[:3], [0, 1, 15])      # exact below num_buckets / 2
  assert np.all(np.diff(buckets) >= 0)                        # monotone in distance
  assert buckets[3] == 16 and buckets[-2] == buckets[-1] == 31  # log-spaced, then capped
  # Future keys (positive relative positions) share bucket 0 in the causal variant.
  assert int(relative_position.relative_position_bucket(
      jnp.asarray(5), False, 32, 128)) == 0


@pytest.mark.parametrize("bidirectional", [False, True])
def test_relative_position_biases_are_the_table_at_each_pairs_bucket(bidirectional):
  """The bias looked up by clipped distance equals table[head, bucket(key - query)] for
  every pair, far pairs and decoding's offset queries included."""
  module = relative_position.RelativePositionBiases(num_buckets=32, max_distance=40,
                                                    num_heads=3, bidirectional=bidirectional)
  queries, keys = jnp.arange(100, 103), jnp.arange(0, 300)   # distances up to +-300
  variables = module.init(jax.random.key(0), queries, keys)
  bias = np.asarray(module.apply(variables, queries, keys))
  table = np.asarray(nn.meta.unbox(variables)["params"]["rel_embedding"])
  buckets = np.asarray(relative_position.relative_position_bucket(
      keys[None, :] - queries[:, None], bidirectional, 32, 40))
  assert bias.shape == (1, 3, 3, 300)
  np.testing.assert_allclose(bias[0], table[:, buckets], rtol=1e-6)


def test_rotary_scores_depend_only_on_distance():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 1, 2, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 2, 8)), jnp.float32)
  score = lambda pq, pk: jnp.sum(rotary.apply_rotary(q, jnp.array([pq]))
                                 * rotary.apply_rotary(k, jnp.array([pk])))
  np.testing.assert_allclose(score(3, 1), score(10, 8), rtol=1e-5)
  assert abs(float(score(3, 1)) - float(score(3, 2))) > 1e-4


def test_loss_is_causal_and_uses_the_prefix(batch):
  model = lm_fixtures.tiny_model()
  params = init_params(model, batch)
  apply = lambda tokens, prefix: model.module.apply({"params": params}, tokens, prefix)
  tokens, prefix = batch["decoder_input_tokens"], batch["prefix_tokens"]
  logits = apply(tokens, prefix)
  assert logits.shape == tokens.shape + (model.config.padded_target_vocab,)
  # Changing token 5 leaves the logits at positions 0..4 untouched, and changes later ones.
  changed = apply(np.where(np.arange(tokens.shape[1]) == 5, 7, tokens), prefix)
  np.testing.assert_allclose(changed[:, :5], logits[:, :5], rtol=1e-6, atol=1e-6)
  assert not np.allclose(changed[:, 5:], logits[:, 5:])
  # The prefix conditions every position.
  other = apply(tokens, (prefix + 1) % model.config.prefix_vocab_size)
  assert not np.allclose(other[:, 0], logits[:, 0])
  # Padded vocabulary ids (and BOS) are never predicted.
  assert np.all(np.asarray(logits[..., model.config.target_vocab_size:]) <= -1e9)


def test_score_matches_loss_and_prefix_dropout_trains_null_prefix(batch):
  model = lm_fixtures.tiny_model()
  params = init_params(model, batch)
  loss, metrics = model.loss_fn(params, batch, None)
  scores = model.score_batch(params, batch)
  np.testing.assert_allclose(-np.sum(scores) / float(metrics["weight_sum"]), float(loss),
                             rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss_sum"]) / float(metrics["weight_sum"]),
                             float(loss), rtol=1e-6)
  # With prefix dropout 1, every prefix is NULL during training.
  always_null = lm_models.DecoderOnlyLMModel(model.module, optax.adam(1e-3),
                                             prefix_dropout_rate=1.0)
  dropped, _ = always_null.loss_fn(params, batch, jax.random.key(3))
  null_batch = dict(batch, prefix_tokens=np.full_like(batch["prefix_tokens"],
                                                      model.config.null_prefix_id))
  expected, _ = model.loss_fn(params, null_batch, None)
  np.testing.assert_allclose(float(dropped), float(expected), rtol=1e-6)


def _stack_layers(params, num_layers):
  layers = [params.pop(f"layers_{i}") for i in range(num_layers)]
  params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return params


@pytest.mark.parametrize("remat_policy", decoder_lm.REMAT_POLICIES)
def test_scanned_and_rematerialised_layers_compute_the_same_function(batch, remat_policy):
  loop = lm_fixtures.tiny_model()
  params = init_params(loop, batch)
  scanned = lm_fixtures.tiny_model(scan_layers=True, remat_policy=remat_policy)
  scanned_params = init_params(scanned, batch)
  stacked = _stack_layers(dict(params), loop.config.num_layers)
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, scanned_params)

  grad = lambda m, p: jax.value_and_grad(lambda q: m.loss_fn(q, batch, None)[0])(p)
  loss_loop, grads_loop = grad(loop, params)
  loss_scan, grads_scan = grad(scanned, stacked)
  np.testing.assert_allclose(float(loss_scan), float(loss_loop), rtol=1e-6)
  grads_loop = _stack_layers(dict(grads_loop), loop.config.num_layers)
  for a, b in zip(jax.tree.leaves(grads_scan), jax.tree.leaves(grads_loop)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("remat_policy, kept", [
    ("save_qkv_proj", {"query_proj", "key_proj", "value_proj"}),
    ("save_dot_except_mlp", {"query_proj", "key_proj", "value_proj", "out_proj"}),
    ("full", set())])
def test_named_remat_policies_keep_exactly_their_projections(batch, remat_policy, kept,
                                                              capsys):
  """What the backward pass reads back from a rematerialised layer: the named projections
  the policy keeps, none of the others (the rest is recomputed)."""
  model = lm_fixtures.tiny_model(remat_policy=remat_policy)  # unscanned: names stay visible
  params = init_params(model, batch)
  capsys.readouterr()
  jax.ad_checkpoint.print_saved_residuals(lambda p: model.loss_fn(p, batch, None)[0], params)
  residuals = capsys.readouterr().out
  names = {"query_proj", "key_proj", "value_proj", "out_proj", "mlpwi", "mlpwo"}
  assert {n for n in names if f"named '{n}'" in residuals} == kept


def test_grouped_query_attention_equals_multi_head_with_shared_key_values(batch):
  """num_kv_heads=1 computes what multi-head attention computes when every head has the
  same key and value projections."""
  mqa = lm_fixtures.tiny_model(num_kv_heads=1)
  mha = lm_fixtures.tiny_model()
  params = init_params(mqa, batch)
  shared = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.repeat(x, mha.config.num_heads, axis=1)
      if any(getattr(k, "key", None) in ("key", "value") for k in path) else x, params)
  np.testing.assert_allclose(mqa.loss_fn(params, batch, None)[0],
                             mha.loss_fn(shared, batch, None)[0], rtol=1e-6)
  assert params["layers_0"]["self_attention"]["key"]["kernel"].shape[1] == 1


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
@pytest.mark.parametrize("overrides", [{}, {"num_kv_heads": 1},
                                       {"position_embedding": "rotary"}])
def test_library_attention_computes_the_same_function(batch, overrides, implementation):
  """jax.nn.dot_product_attention ('xla' here; 'cudnn', its fused kernel, on GPUs) and the
  Pallas TPU flash-attention kernel (in Pallas's interpret mode here), with the T5 bias,
  grouped-query heads or rotary positions: the einsum path's loss and gradients (the bias
  table's included)."""
  einsum = lm_fixtures.tiny_model(**overrides)
  library = lm_fixtures.tiny_model(attention_implementation=implementation, **overrides)
  params = init_params(einsum, batch)
  # Under jit, as training runs it.
  grad = lambda m: jax.jit(jax.value_and_grad(lambda q: m.loss_fn(q, batch, None)[0]))(params)
  (loss_a, grads_a), (loss_b, grads_b) = grad(einsum), grad(library)
  np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_library_attention_needs_no_attention_dropout():
  with pytest.raises(ValueError, match="attention_dropout_rate"):
    lm_fixtures.tiny_config(attention_implementation="cudnn", dropout_rate=0.1)
  lm_fixtures.tiny_config(attention_implementation="cudnn", dropout_rate=0.1,
                          attention_dropout_rate=0.0)  # residual dropout stays
  with pytest.raises(ValueError, match="attention_implementation"):
    lm_fixtures.tiny_config(attention_implementation="flash")


def test_scanned_parameters_carry_a_stack_axis(batch):
  scanned = lm_fixtures.tiny_model(scan_layers=True)
  boxed = scanned.get_initial_variables(jax.random.key(0), lm_fixtures.input_shapes(batch))
  spec = nn.get_partition_spec(boxed)["params"]["layers"]["self_attention"]["query"]["kernel"]
  assert tuple(spec) == ("stack", "embed", "heads", "kv")


def test_bfloat16_compute_keeps_float32_master_weights(batch):
  f32 = lm_fixtures.tiny_model()
  bf16 = lm_fixtures.tiny_model(dtype="bfloat16")
  params = init_params(f32, batch)
  assert {x.dtype for x in jax.tree.leaves(init_params(bf16, batch))} == {jnp.dtype("float32")}
  loss32, _ = f32.loss_fn(params, batch, None)
  loss16, _ = bf16.loss_fn(params, batch, None)
  np.testing.assert_allclose(float(loss16), float(loss32), rtol=2e-2)
  grads = jax.grad(lambda p: bf16.loss_fn(p, batch, None)[0])(params)
  assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype("float32")}


def test_bad_configuration_and_inputs_are_named():
  with pytest.raises(ValueError, match="position_embedding='alibi'"):
    lm_fixtures.tiny_config(position_embedding="alibi")
  with pytest.raises(ValueError, match="num_kv_heads=3"):
    lm_fixtures.tiny_config(num_kv_heads=3)
  with pytest.raises(ValueError, match="remat_policy"):
    lm_fixtures.tiny_config(remat_policy="some")
  model = lm_fixtures.tiny_model()
  with pytest.raises(KeyError, match="prefix_tokens"):
    model.loss_fn({}, {"decoder_input_tokens": np.zeros((1, 4), np.int32)}, None)
  unconditional = decoder_lm.DecoderOnlyLM(lm_fixtures.tiny_config(prefix_vocab_size=0))
  with pytest.raises(ValueError, match="prefix_vocab_size=0"):
    unconditional.init(jax.random.key(0), np.zeros((1, 4), np.int32),
                       np.zeros((1, 2), np.int32))


@pytest.mark.parametrize("chunk", [8, 5, 64])
def test_chunked_loss_equals_the_plain_loss_and_gradients(batch, chunk):
  """Logits made a chunk at a time (5: padded; 64: one chunk longer than the targets),
  z-loss and the metrics included, equal the whole-logits loss."""
  import optax
  from musiclm_jax.lm import decoder_lm, models as lm_models
  make = lambda n: lm_models.DecoderOnlyLMModel(
      decoder_lm.DecoderOnlyLM(lm_fixtures.tiny_config()), optax.adam(1e-3), z_loss=1e-3,
      loss_chunk_length=n)
  plain, chunked = make(0), make(chunk)
  params = init_params(plain, batch)
  run = lambda m: jax.value_and_grad(lambda q: m.loss_fn(q, batch, None), has_aux=True)(
      params)
  ((loss_a, metrics_a), grads_a), ((loss_b, metrics_b), grads_b) = run(plain), run(chunked)
  np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-6)
  for key in metrics_a:
    np.testing.assert_allclose(float(metrics_b[key]), float(metrics_a[key]), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="loss_chunk_length"):
    make(-1)


def test_cached_decoding_matches_the_pallas_kernel_forward(batch):
  """Decoding (its cache takes the einsum path) fed the targets one at a time gives the
  logits of one full forward through the Pallas kernel. (The decoding tests' per-step
  full recomputation is too slow for the interpreted kernel.)"""
  model = lm_fixtures.tiny_model(attention_implementation="pallas")
  params = init_params(model, batch)
  tokens, prefix = batch["decoder_input_tokens"][:, :8], batch["prefix_tokens"]
  full = jax.jit(model.module.apply)({"params": params}, tokens, prefix)   # jit: see above
  length = prefix.shape[1] + tokens.shape[1]
  step = lambda variables, chunk, prefix: model.module.apply(
      variables, chunk, prefix, decode=True, cache_length=length, mutable=["cache"])
  logits, variables = step({"params": params}, tokens[:, :1], prefix)
  cached = [logits[:, -1]]
  for i in range(1, tokens.shape[1]):
    logits, variables = step({"params": params, "cache": variables["cache"]},
                             tokens[:, i:i + 1], None)
    cached.append(logits[:, -1])
  np.testing.assert_allclose(np.stack(cached, axis=1), full, rtol=1e-4, atol=1e-4)
