"""Checkpoints: restore onto another mesh, fall back from an unreadable newest step, name a
damaged step read for export."""

import glob
import os

import jax
import numpy as np
import pytest

from musiclm_jax.training import checkpoints, partitioning, trainer as trainer_lib
from tests import lm_fixtures
from tests.harness import assert_trees_close


def _trained_state(partitioner, steps, batches):
  trainer = trainer_lib.Trainer(lm_fixtures.tiny_model(), partitioner)
  state = trainer.create_state(lm_fixtures.input_shapes(batches[0]))
  for batch in batches[:steps]:
    state, _ = trainer.train_step(state, partitioner.shard_batch(batch))
  return trainer, state


def _saved_after(model_dir, steps, batches):
  """(trainer, state) after `steps` single-device steps, that state saved in model_dir."""
  trainer, state = _trained_state(lm_fixtures.single_device_partitioner(), steps, batches)
  manager = checkpoints.CheckpointManager(str(model_dir), save_interval_steps=1)
  manager.save(steps, state, {"batches_consumed": steps})
  manager.close()
  return trainer, state


def test_checkpoint_restores_onto_another_mesh(tmp_path):
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  batches = lm_fixtures.batches(3)
  _, state = _saved_after(tmp_path, 2, batches)

  mesh = partitioning.Partitioner(num_partitions=2)
  trainer = trainer_lib.Trainer(lm_fixtures.tiny_model(), mesh)
  abstract, _ = trainer.abstract_state(lm_fixtures.input_shapes(batches[0]))
  restored = checkpoints.CheckpointManager(str(tmp_path)).restore(abstract)
  assert restored.step == 2 and restored.data_iterator == {"batches_consumed": 2}
  assert restored.run_info["musiclm_jax_version"]
  assert_trees_close(jax.device_get(restored.state.params), jax.device_get(state.params),
                     rtol=0, atol=0)
  # The restored arrays live on the new mesh, laid out by its rules.
  for target, array in zip(jax.tree.leaves(abstract), jax.tree.leaves(restored.state)):
    assert array.sharding == target.sharding
  # ... and training continues there.
  new_state, metrics = trainer.train_step(restored.state, mesh.shard_batch(batches[2]))
  assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 3


def test_unreadable_newest_checkpoint_falls_back_and_keeps_files(tmp_path, capsys):
  batches = lm_fixtures.batches(4)
  one = lm_fixtures.single_device_partitioner()
  trainer, state = _trained_state(one, 2, batches)
  manager = checkpoints.CheckpointManager(str(tmp_path), save_interval_steps=1)
  manager.save(2, state, {"batches_consumed": 2})
  manager.wait_until_finished()
  for batch in batches[2:4]:
    state, _ = trainer.train_step(state, one.shard_batch(batch))
  manager.save(4, state, {"batches_consumed": 4})
  manager.close()

  # Truncate every array data file of the newest step, as a crashed copy or full disk would.
  data_files = [p for p in glob.glob(str(tmp_path / "checkpoints" / "4" / "state" / "**" / "*"),
                                     recursive=True)
                if os.path.isfile(p) and "d" in os.path.basename(os.path.dirname(p))]
  assert data_files
  for path in data_files:
    with open(path, "r+b") as f:
      f.truncate(max(os.path.getsize(path) // 3, 1))

  abstract, _ = trainer.abstract_state(lm_fixtures.input_shapes(batches[0]))
  restored = checkpoints.CheckpointManager(str(tmp_path)).restore(abstract)
  assert restored.step == 2
  assert restored.data_iterator == {"batches_consumed": 2}
  out = capsys.readouterr().out
  assert "step 4" in out and "unreadable" in out
  # Nothing was deleted: the damaged step is kept aside for inspection.
  assert os.path.isdir(tmp_path / "checkpoints" / f"4{checkpoints.CORRUPT_SUFFIX}")


def test_damaged_checkpoint_read_for_export_is_named_and_kept(tmp_path):
  _saved_after(tmp_path, 1, lm_fixtures.batches(2))
  assert checkpoints.restore_numpy_state(str(tmp_path), 1)[0] == 1

  # Truncate every file of the step, its metadata included.
  files = [p for p in glob.glob(str(tmp_path / "checkpoints" / "1" / "state" / "**" / "*"),
                                recursive=True) if os.path.isfile(p)]
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(min(os.path.getsize(path), 10))
  with pytest.raises(checkpoints.UnreadableCheckpointError,
                     match=r"step 1 in .*checkpoints is unreadable"):
    checkpoints.restore_numpy_state(str(tmp_path), 1)
  # A ValueError, which the command line reports in one line (exit 2); nothing moved.
  assert issubclass(checkpoints.UnreadableCheckpointError, ValueError)
  assert os.path.isdir(tmp_path / "checkpoints" / "1")
