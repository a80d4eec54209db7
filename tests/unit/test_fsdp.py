"""Fully sharded data parallelism on 8 simulated devices: the 'fsdp' mesh axis trains like
one device, really shards parameters, optimizer state and EMA, and checkpoints move
between replicated and fully sharded layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.training import checkpoints, partitioning, trainer as trainer_lib
from tests import lm_fixtures
from tests.harness import assert_trees_close

MESHES = {"fsdp=8": dict(fsdp_parallel=8),
          "fsdp=4 x model=2": dict(fsdp_parallel=4, num_partitions=2),
          "data=2 x fsdp=4": dict(data_parallel=2, fsdp_parallel=4)}


@pytest.fixture(autouse=True)
def _eight_devices():
  if jax.device_count() < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


def _device0_bytes(tree) -> int:
  """Bytes of the tree's arrays held by the first device."""
  device = jax.devices()[0]
  return sum(shard.data.nbytes for x in jax.tree.leaves(tree)
             for shard in x.addressable_shards if shard.device == device)


def _total_bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def single():
  batches = lm_fixtures.batches(3)
  state, losses = lm_fixtures.train(lm_fixtures.single_device_partitioner(), batches, 3,
                                    ema_decay=0.9)
  return batches, jax.device_get(state.params), losses


@pytest.mark.parametrize("mesh", MESHES, ids=list(MESHES))
def test_fsdp_trains_like_one_device_with_state_really_sharded(single, mesh):
  batches, single_params, single_losses = single
  partitioner = partitioning.Partitioner(**MESHES[mesh])
  state, losses = lm_fixtures.train(partitioner, batches, 3, ema_decay=0.9)
  np.testing.assert_allclose(losses, single_losses, rtol=2e-5)
  assert_trees_close(jax.device_get(state.params), single_params, rtol=1e-4, atol=1e-5)

  fsdp = partitioner.fsdp_parallel_size
  for tree in (state.params, state.ema_params, state.opt_states):
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
      spec = tuple(x.sharding.spec)
      flat = [a for entry in spec if entry for a in ((entry,) if isinstance(entry, str)
                                                     else entry)]
      if x.size >= 512:   # every large array is split over 'fsdp' (the relative position
        assert "fsdp" in flat, (jax.tree_util.keystr(path), spec)   # table is not large)
      ways = int(np.prod([partitioner.mesh.shape[a] for a in flat])) if flat else 1
      assert x.addressable_shards[0].data.size * ways == x.size
  # Parameters + optimizer state + EMA per device: at least fsdp/1.25 times less than whole.
  whole = _total_bytes((state.params, state.ema_params, state.opt_states))
  per_device = _device0_bytes((state.params, state.ema_params, state.opt_states))
  assert per_device * fsdp / 1.25 <= whole, (per_device, whole)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_kernels_run_per_shard_of_batch_and_heads(causal):
  """XLA cannot partition a Mosaic kernel, so the layer calls it per device (shard_map over
  the batch and heads the logical rules split). The sharded kernel (interpreted on this
  host) equals the whole one and the plain-JAX reference, bias and segment ids included."""
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
  from musiclm_jax.layers import attention
  rng = np.random.default_rng(0)
  length = attention.PALLAS_BLOCK   # the kernel's smallest sequence with segment ids
  q, k, v = (jnp.asarray(rng.normal(size=(4, 2, length, 8)), jnp.float32) for _ in range(3))
  bias = jnp.asarray(rng.normal(size=(4, 2, length, length)), jnp.float32)
  ids = jnp.asarray(np.arange(length)[None].repeat(4, 0) < length - 4, jnp.int32)
  segments = None if causal else tpu_flash.SegmentIds(q=ids, kv=ids)
  kernel = lambda *args: tpu_flash.flash_attention(*args, causal=causal, sm_scale=1.0,
                                                   block_sizes=attention.pallas_block_sizes(length))
  from jax.experimental.pallas import tpu as pltpu
  pltpu.set_tpu_interpret_mode(True)   # as attention.py does on a host without a TPU
  whole = jax.jit(kernel)(q, k, v, bias, segments)
  reference = tpu_flash.mha_reference(q, k, v, bias, segments, causal=causal, sm_scale=1.0)
  np.testing.assert_allclose(whole, reference, rtol=1e-5, atol=1e-5)
  partitioner = partitioning.Partitioner(**MESHES["fsdp=4 x model=2"])
  sharded = partitioner.partition(lambda *a: attention._per_shard(kernel, *a),
                                  in_shardings=None, out_shardings=None)
  np.testing.assert_allclose(sharded(q, k, v, bias, segments), whole, rtol=1e-5, atol=1e-6)
  text = sharded.lower(q, k, v, bias, segments).as_text()
  assert "shard_map" in text or "manual" in text.lower()


def test_the_pallas_train_step_lowers_for_a_tpu_mesh():
  """The train step with the Pallas kernel under fsdp x model lowers for TPU (read on this
  host, not run): a Mosaic call per shard, which XLA would refuse to partition itself."""
  from jax.experimental.pallas import tpu as pltpu
  batches = lm_fixtures.batches(1)
  partitioner = partitioning.Partitioner(**MESHES["fsdp=4 x model=2"])
  model = lm_fixtures.tiny_model(attention_implementation="pallas")
  trainer = trainer_lib.Trainer(model, partitioner)
  abstract, _ = trainer.abstract_state(lm_fixtures.input_shapes(batches[0]))
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batches[0])
  with pltpu.force_tpu_interpret_mode(None):   # the real kernel, not the CPU interpreter
    text = trainer.lower_train_step(abstract, shapes, platforms=("tpu",)).as_text()
  assert text.count("@tpu_custom_call") >= 3   # forward, and the two backward kernels


def test_the_fsdp_axis_takes_the_remaining_devices_and_activations_stay_batch_sharded():
  partitioner = partitioning.Partitioner(fsdp_parallel=-1, num_partitions=2)
  assert dict(partitioner.mesh.shape) == {"data": 1, "fsdp": 4, "model": 2}
  assert partitioner.data_parallel_size == 4
  assert partitioner.data_sharding(2).spec == jax.sharding.PartitionSpec(
      ("data", "fsdp"), None)
  import flax.linen as nn
  rules = partitioner.logical_axis_rules
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == (
      jax.sharding.PartitionSpec(("data", "fsdp"), None, None))
  assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == jax.sharding.PartitionSpec(
      "fsdp", "model")
  # A dimension the axis does not divide stays whole on it.
  assert partitioner.fit_spec(jax.sharding.PartitionSpec("fsdp", "model"), (6, 8)) == (
      jax.sharding.PartitionSpec(None, "model"))
  with pytest.raises(ValueError, match="fsdp_parallel=3"):
    partitioning.Partitioner(fsdp_parallel=3)


@pytest.mark.parametrize("save_on,restore_on", [
    (dict(fsdp_parallel=8), dict(devices="one")),
    (dict(devices="one"), dict(fsdp_parallel=4, num_partitions=2)),
    (dict(data_parallel=2, fsdp_parallel=4), dict(fsdp_parallel=4, num_partitions=2)),
], ids=["fsdp->replicated", "replicated->fsdp+model", "data+fsdp->fsdp+model"])
def test_checkpoints_move_between_layouts_bit_identical(tmp_path, save_on, restore_on):
  def partitioner(kw):
    if kw.get("devices") == "one":
      return lm_fixtures.single_device_partitioner()
    return partitioning.Partitioner(**kw)

  batches = lm_fixtures.batches(3)
  state, _ = lm_fixtures.train(partitioner(save_on), batches, 2, ema_decay=0.9)
  manager = checkpoints.CheckpointManager(str(tmp_path), save_interval_steps=1)
  manager.save(2, state, {"batches_consumed": 2})
  manager.close()
  target = partitioner(restore_on)
  trainer = trainer_lib.Trainer(lm_fixtures.tiny_model(), target, ema_decay=0.9)
  abstract, _ = trainer.abstract_state(lm_fixtures.input_shapes(batches[0]))
  restored = checkpoints.CheckpointManager(str(tmp_path)).restore(abstract)
  assert restored.data_iterator == {"batches_consumed": 2}
  assert_trees_close(jax.device_get(restored.state), jax.device_get(state), rtol=0, atol=0)
  for want, array in zip(jax.tree.leaves(abstract), jax.tree.leaves(restored.state)):
    assert array.sharding == want.sharding
  new_state, metrics = trainer.train_step(restored.state, target.shard_batch(batches[2]))
  assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 3
