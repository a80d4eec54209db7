"""Vector quantizers: k-means init, EMA learning, dead codes, dropout, identical shards."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from musiclm_jax.layers import kmeans, quantizers
from musiclm_jax.training import partitioning


def clustered(n=512, k=8, dim=4, seed=0, spread=0.05):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, dim)).astype(np.float32) * 3
  labels = rng.integers(0, k, n)
  return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), centres


def train_steps(module, variables, batches, **kw):
  for x in batches:
    _, updates = module.apply(variables, x, train=True, mutable=[quantizers.COLLECTION], **kw)
    variables = {**variables, **updates}
  return variables


def init(module, x):
  return nn.meta.unbox(module.init(jax.random.key(0), x))


def test_kmeans_init_finds_the_clusters():
  x, centres = clustered()
  vq = quantizers.VectorQuantizer(8, 4, kmeans_iterations=20, dead_code_threshold=0)
  variables = train_steps(vq, init(vq, x[None]), [x[None]])
  codebook = np.asarray(variables[quantizers.COLLECTION]["codebook"])
  # Every true centre has a code within the noise level.
  nearest = np.min(np.linalg.norm(centres[:, None] - codebook[None], axis=-1), axis=1)
  assert np.all(nearest < 0.5), nearest
  _, codes, metrics = vq.apply(variables, x[None])
  assert codes.shape == (1, 512) and codes.dtype == jnp.int32
  assert float(metrics["perplexity"]) > 6


def test_dead_codes_are_revived_on_the_data():
  x, _ = clustered(k=4)
  vq = quantizers.VectorQuantizer(16, 4, kmeans_iterations=0, dead_code_threshold=1.0,
                                  decay=0.5)
  variables = init(vq, x[None])
  # Start from a codebook far from the data: most codes are never chosen.
  state = dict(variables[quantizers.COLLECTION])
  state["codebook"] = jnp.full((16, 4), 100.0).at[0].set(0.0)
  state["cluster_size"] = jnp.ones(16)
  state["embed_sum"] = state["codebook"]
  state["initialized"] = jnp.ones((), bool)
  variables = {quantizers.COLLECTION: state}
  variables = train_steps(vq, variables, [x[None]] * 5)
  codebook = np.asarray(variables[quantizers.COLLECTION]["codebook"])
  assert np.all(np.abs(codebook) < 20), "dead codes were not moved onto the data"
  _, _, metrics = vq.apply(variables, x[None])
  assert float(metrics["usage"]) > 0.2


def test_residual_levels_reduce_the_error_and_decode_at_every_bitrate():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 64, 8)).astype(np.float32)
  rvq = quantizers.ResidualVectorQuantizer(4, 32, 8, quantizer_dropout=False)
  variables = train_steps(rvq, init(rvq, x), [x] * 3)
  quantized, codes, _ = rvq.apply(variables, x)
  assert codes.shape == (4, 64, 4)
  assert int(codes.max()) < 32 and int(codes.min()) >= 0
  errors = []
  for q in range(1, 5):
    decoded = rvq.apply(variables, codes[..., :q], method=rvq.decode)
    errors.append(float(jnp.mean((decoded - x) ** 2)))
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  np.testing.assert_allclose(rvq.apply(variables, codes, method=rvq.decode), quantized,
                             rtol=1e-5, atol=1e-5)


def test_every_level_learns_when_batches_are_smaller_than_the_codebook():
  """Fewer vectors per batch than codes (SoundStream: 200 frames vs 1024 codes) must not
  turn every code dead each step, nor let level 0 copy the batch and starve the others."""
  rng = np.random.default_rng(0)
  batches = [rng.normal(size=(2, 20, 4)).astype(np.float32) for _ in range(6)]
  rvq = quantizers.ResidualVectorQuantizer(4, 64, 4, quantizer_dropout=False)
  variables = train_steps(rvq, init(rvq, batches[0]), batches)
  state = variables[quantizers.COLLECTION]
  test = rng.normal(size=(2, 20, 4)).astype(np.float32)
  codes = np.asarray(rvq.apply(variables, test, method=rvq.encode))
  errors = [float(jnp.mean((rvq.apply(variables, codes[..., :q], method=rvq.decode)
                            - test) ** 2)) for q in range(1, 5)]
  for level in range(4):
    assert float(jnp.abs(state[f"level_{level}"]["codebook"]).max()) > 0, level
    assert len(np.unique(codes[..., level])) > 3, (level, codes[..., level])
  assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_quantizer_dropout_uses_fewer_levels_per_example():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 8, 4)).astype(np.float32)
  rvq = quantizers.ResidualVectorQuantizer(4, 16, 4, quantizer_dropout=True)
  variables = train_steps(rvq, init(rvq, x), [x])
  (dropped, codes, _), updates = rvq.apply(variables, x, train=True,
                                           dropout_rng=jax.random.key(1),
                                           mutable=[quantizers.COLLECTION])
  # A training step quantizes with the codebooks as they were before its own update.
  del updates
  by_depth = [np.asarray(rvq.apply(variables, codes[..., :q], method=rvq.decode))
              for q in range(1, 5)]
  # Each example's output is the decoding of its first n levels, for its own n.
  depths = []
  for b in range(x.shape[0]):
    matches = [q + 1 for q in range(4)
               if np.allclose(np.asarray(dropped[b]), by_depth[q][b], atol=1e-5)]
    assert matches, f"example {b} matches no depth"
    depths.append(matches[0])
  assert set(depths) == {1, 2, 3, 4}
  # Without train (a GAN's discriminator step): the same draw, and no codebook update.
  same, _, _ = rvq.apply(variables, x, dropout_rng=jax.random.key(1))
  np.testing.assert_allclose(np.asarray(same), np.asarray(dropped), atol=1e-6)
  full, _, _ = rvq.apply(variables, x)
  assert not np.allclose(np.asarray(full), np.asarray(dropped), atol=1e-5)


def test_gradients_pass_straight_through():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 4)), jnp.float32)
  rvq = quantizers.ResidualVectorQuantizer(2, 8, 4)
  variables = train_steps(rvq, init(rvq, x), [x])
  grad = jax.grad(lambda y: jnp.sum(rvq.apply(variables, y)[0] * 2.0)
                  + rvq.apply(variables, y)[2]["commitment_loss"])(x)
  assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).mean()) > 1.0


def test_sharded_codebooks_equal_single_device():
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  rng = np.random.default_rng(0)
  batches = [rng.normal(size=(8, 16, 4)).astype(np.float32) for _ in range(3)]
  rvq = quantizers.ResidualVectorQuantizer(3, 16, 4, quantizer_dropout=False)
  start = init(rvq, batches[0])

  def step(variables, x):
    _, updates = rvq.apply(variables, x, train=True, mutable=[quantizers.COLLECTION])
    return {**variables, **updates}

  single = start
  for x in batches:
    single = jax.jit(step)(single, x)

  mesh = partitioning.Partitioner(num_partitions=1)  # data = 8
  replicated = NamedSharding(mesh.mesh, P())
  sharded_step = jax.jit(step, in_shardings=(replicated, NamedSharding(mesh.mesh, P("data"))),
                         out_shardings=replicated)
  sharded = jax.device_put(start, replicated)
  for x in batches:
    with mesh.activation_context():
      sharded = sharded_step(sharded, x)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  # ... and every device really holds the same codebook.
  codebook = sharded[quantizers.COLLECTION]["level_0"]["codebook"]
  shards = [np.asarray(s.data) for s in codebook.addressable_shards]
  assert len(shards) == 8 and all(np.array_equal(shards[0], s) for s in shards)


def test_lloyd_matches_a_numpy_reference():
  x, _ = clustered(n=200, k=5, seed=3, spread=0.5)
  start = x[:5].copy()
  centroids, counts = kmeans.lloyd(jnp.asarray(x), jnp.asarray(start), 10)
  c = start.copy()
  for _ in range(10):
    labels = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
    c = np.stack([x[labels == j].mean(0) if np.any(labels == j) else c[j] for j in range(5)])
  np.testing.assert_allclose(np.asarray(centroids), c, rtol=1e-4, atol=1e-4)
  assert int(counts.sum()) == 200
