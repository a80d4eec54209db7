"""Trainer core on a small two-part model: accumulation, EMA, optimizer groups, shardings."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from musiclm_jax.training import models as models_lib
from musiclm_jax.training import partitioning, trainer as trainer_lib


class TwoTower(nn.Module):
  """'generator' maps x -> y; 'critic' scores y. Enough structure for two optimizer groups."""

  @nn.compact
  def __call__(self, x):
    dense = lambda name, features, axes: nn.Dense(
        features, name=name, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), axes))
    y = dense("generator", 8, ("embed", "mlp"))(x)
    score = dense("critic", 1, ("mlp", "embed"))(jnp.tanh(y))
    return y, score[..., 0]


class TwoTowerModel(models_lib.BaseModel):
  """Regression for 'default'; a toy adversarial pair of losses for the GAN groups."""

  def __init__(self, optimizer_def, groups=None):
    super().__init__(TwoTower(), optimizer_def)
    self._groups = groups

  @property
  def optimizer_groups(self):
    return self._groups or super().optimizer_groups

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    return self.module.init(rng, jnp.zeros(input_shapes["x"], jnp.float32))

  def loss_fn(self, params, batch, dropout_rng, group="default"):
    y, score = self.module.apply({"params": params}, batch["x"])
    if group == "critic":
      loss = jnp.mean((score - batch["t"]) ** 2)
    else:
      loss = jnp.mean((y - batch["x"][:, :8]) ** 2) + 0.1 * jnp.mean(score ** 2)
    n = jnp.asarray(batch["x"].shape[0], jnp.float32)
    return loss, {"loss_sum": loss * n, "weight_sum": n}

  def predict_batch(self, params, batch, rng=None, **kw):
    return self.module.apply({"params": params}, batch["x"])[0]

  def score_batch(self, params, batch):
    return -jnp.sum((self.predict_batch(params, batch) - batch["x"][:, :8]) ** 2, -1)


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(n, 16)).astype(np.float32),
          "t": rng.normal(size=(n,)).astype(np.float32)}


def _run(model, steps=3, **trainer_kw):
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner, **trainer_kw)
  state = trainer.create_state({"x": (8, 16), "t": (8,)})
  losses = []
  for i in range(steps):
    state, metrics = trainer.train_step(state, partitioner.shard_batch(_batch(seed=i)))
    losses.append(float(metrics.get("loss", metrics.get("generator/loss"))))
  return state, losses


def test_gradient_accumulation_matches_full_batch():
  model = TwoTowerModel(optax.sgd(0.1))
  full, full_losses = _run(model)
  accumulated, acc_losses = _run(model, num_microbatches=4)
  np.testing.assert_allclose(full_losses, acc_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(accumulated.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ema_tracks_params_after_a_warm_up():
  model = TwoTowerModel(optax.sgd(0.1))
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner, ema_decay=0.999)
  state = trainer.create_state({"x": (8, 16), "t": (8,)})
  init = jax.tree.map(np.asarray, state.params)
  batch = partitioner.shard_batch(_batch())
  state, _ = trainer.train_step(state, batch)
  # The first update decays by 1/10, not 0.999: the EMA starts near the trained params.
  expected = jax.tree.map(lambda b, p: 0.1 * b + 0.9 * np.asarray(p), init, state.params)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(state.ema_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  for _ in range(39):
    state, _ = trainer.train_step(state, batch)
  # After 40 steps a plain 0.999 EMA would be 96% the initialisation; this one has moved
  # most of the way (the EMA still lags the params over the last few dozen steps).
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  moved, lag = flat(state.params) - flat(init), flat(state.params) - flat(state.ema_params)
  assert np.linalg.norm(lag) < 0.25 * np.linalg.norm(moved)
  assert float(trainer_lib.ema_decay_at(0.999, 10 ** 6)) == np.float32(0.999)


def test_optimizer_groups_update_only_their_params():
  groups = {"critic": ["critic"], "generator": ["generator"]}
  model = TwoTowerModel({"critic": optax.sgd(0.0), "generator": optax.sgd(0.1)}, groups)
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner)
  init = jax.tree.map(np.asarray, trainer.create_state({"x": (8, 16), "t": (8,)}).params)
  state, metrics = trainer.train_step(trainer.create_state({"x": (8, 16), "t": (8,)}),
                                      partitioner.shard_batch(_batch()))
  np.testing.assert_array_equal(state.params["critic"]["kernel"], init["critic"]["kernel"])
  assert not np.allclose(state.params["generator"]["kernel"], init["generator"]["kernel"])
  assert {"critic/loss", "generator/loss", "critic/grad_norm"} <= set(metrics)


def test_unknown_group_collection_is_a_clear_error():
  model = TwoTowerModel(optax.sgd(0.1), {"g": ["no_such_module"]})
  with pytest.raises(KeyError, match="no_such_module"):
    _run(model, steps=1)


def test_state_is_sharded_by_logical_rules():
  if jax.device_count() < 2:
    pytest.skip("needs several devices (XLA_FLAGS=--xla_force_host_platform_device_count)")
  partitioner = partitioning.Partitioner(num_partitions=2)
  trainer = trainer_lib.Trainer(TwoTowerModel(optax.adam(1e-3)), partitioner)
  state = trainer.create_state({"x": (8, 16), "t": (8,)})
  spec = state.params["generator"]["kernel"].sharding.spec
  assert tuple(spec) == (None, "model")
  # Adam's moments follow their parameters' layout.
  mu = state.opt_states["default"][0].mu["generator"]["kernel"]
  assert tuple(mu.sharding.spec) == (None, "model")
