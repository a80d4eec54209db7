"""The shared training loop (`training.train_loop`) with batches made in memory: what the
benchmarks train with. The `train` entry point's use of it is tested end to end in
tests/integration/test_train_e2e.py (resume, checkpoints, non-finite stops)."""

import jax
import numpy as np
import optax
import pytest

from musiclm_jax.training import partitioning, train_loop, trainer as trainer_lib
from tests.unit.test_trainer import TwoTowerModel


def _make_batch(rng, scale=1.0):
  return {"x": (scale * rng.normal(size=(8, 16))).astype(np.float32),
          "t": rng.normal(size=(8,)).astype(np.float32)}


def _trainer(learning_rate=1e-2):
  model = TwoTowerModel(optax.adam(learning_rate))
  return trainer_lib.Trainer(model, partitioning.Partitioner(devices=jax.devices()[:1]), seed=0)


def test_batch_factory_is_reproducible_and_resumes_where_it_stopped():
  a = train_loop.BatchFactory(_make_batch, seed=3)
  first = [next(a)["x"] for _ in range(3)]
  b = train_loop.BatchFactory(_make_batch, seed=3)
  b.set_state(a.get_state())
  assert a.get_state() == {"batches_consumed": 3}
  np.testing.assert_array_equal(next(a)["x"], next(b)["x"])
  c = train_loop.BatchFactory(_make_batch, seed=3)
  np.testing.assert_array_equal(next(c)["x"], first[0])
  assert not np.array_equal(first[0], first[1])


def test_run_trains_and_a_split_run_equals_one_run():
  trainer = _trainer()
  shapes = {"x": (8, 16), "t": (8,)}
  seen = []  # one batch over and over: its loss falls
  train_loop.run(trainer, trainer.create_state(shapes), 0,
                 train_loop.BatchFactory(lambda rng: _make_batch(np.random.default_rng(0))),
                 6, on_step=lambda step, scalars: seen.append((step, scalars["loss"])))
  assert [s for s, _ in seen] == [1, 2, 3, 4, 5, 6] and seen[-1][1] < seen[0][1]
  whole = train_loop.run(trainer, trainer.create_state(shapes), 0,
                         train_loop.BatchFactory(_make_batch), 6)
  assert (whole.step, whole.stopped_by) == (6, "total_steps")
  # Four steps, then two more from the same position: the same parameters as six.
  batches = train_loop.BatchFactory(_make_batch)
  part = train_loop.run(trainer, trainer.create_state(shapes), 0, batches, 6,
                        max_steps_this_run=4)
  assert (part.step, part.stopped_by) == (4, "max_steps_this_run")
  rest = train_loop.run(trainer, part.state, part.step, batches, 6)
  jax.tree.map(np.testing.assert_allclose, jax.device_get(rest.state.params),
               jax.device_get(whole.state.params))


def test_a_time_budget_stops_the_run_and_non_finite_metrics_raise():
  trainer = _trainer()
  shapes = {"x": (8, 16), "t": (8,)}
  result = train_loop.run(trainer, trainer.create_state(shapes), 0,
                          train_loop.BatchFactory(_make_batch), 10**6, max_seconds=0.0)
  assert (result.step, result.stopped_by) == (1, "max_seconds")
  assert result.first_step_seconds is not None and result.first_step_seconds > 0
  with pytest.raises(train_loop.NonFiniteLossError, match="non-finite training metrics at step"):
    train_loop.run(trainer, trainer.create_state(shapes), 0,
                   train_loop.BatchFactory(lambda rng: _make_batch(rng, np.inf)), 3)
