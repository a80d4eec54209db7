"""Training on a data=4 x model=2 mesh of 8 simulated devices equals training on one."""

import jax
import numpy as np
import pytest

from musiclm_jax.training import partitioning
from tests import lm_fixtures
from tests.harness import assert_trees_close


def test_sharded_training_matches_single_device():
  if jax.device_count() < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
  batches = lm_fixtures.batches(4)
  single_state, single_losses = lm_fixtures.train(lm_fixtures.single_device_partitioner(),
                                                  batches, 4)
  mesh = partitioning.Partitioner(num_partitions=2)
  assert dict(mesh.mesh.shape) == {"data": 4, "fsdp": 1, "model": 2}
  sharded_state, sharded_losses = lm_fixtures.train(mesh, batches, 4)

  np.testing.assert_allclose(sharded_losses, single_losses, rtol=2e-5)
  assert single_losses[-1] < single_losses[0]
  assert_trees_close(jax.device_get(sharded_state.params),
                     jax.device_get(single_state.params), rtol=1e-4, atol=1e-5)

  # Parameters really are split over the 'model' axis, and not merely replicated.
  specs = {"/".join(str(getattr(k, "key", k)) for k in path): tuple(x.sharding.spec)
           for path, x in jax.tree_util.tree_leaves_with_path(sharded_state.params)}
  model_sharded = [name for name, spec in specs.items() if "model" in spec]
  assert len(model_sharded) >= len(specs) // 2, specs
  for path, x in jax.tree_util.tree_leaves_with_path(sharded_state.params):
    if "model" in tuple(x.sharding.spec):
      assert len(x.addressable_shards) == 8
      assert x.addressable_shards[0].data.size * 2 == x.size  # half the tensor per shard
