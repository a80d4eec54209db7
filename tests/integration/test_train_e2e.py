"""The real `python -m musiclm_jax.train` in subprocesses: kill/resume, two processes, NaNs,
bad configurations."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import harness

pytestmark = pytest.mark.slow


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
  steps = 12
  reference = str(tmp_path / "uninterrupted")
  harness.run_train(reference, steps)

  resumed = str(tmp_path / "killed")
  proc = harness.popen_train(resumed, steps, log_path=str(tmp_path / "first.log"))
  deadline = time.time() + 300
  # Kill hard once a checkpoint is committed and training has moved past it.
  while time.time() < deadline:
    done = harness.losses(resumed) if os.path.exists(
        os.path.join(resumed, "metrics_train.jsonl")) else {}
    if os.path.isdir(os.path.join(resumed, "checkpoints", "4")) and max(done, default=0) >= 6:
      break
    assert proc.poll() is None, open(tmp_path / "first.log").read()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert max(harness.losses(resumed)) < steps, "the run finished before it could be killed"

  second = harness.run_train(resumed, steps)
  assert "Resumed from step" in second.stdout + second.stderr

  expected, got = harness.losses(reference), harness.losses(resumed)
  assert sorted(got) == list(range(1, steps + 1))
  np.testing.assert_allclose([got[s] for s in range(1, steps + 1)],
                             [expected[s] for s in range(1, steps + 1)], rtol=1e-6)
  harness.assert_trees_close(harness.checkpointed_params(resumed, steps),
                             harness.checkpointed_params(reference, steps), rtol=0, atol=0)


def test_two_processes_train_like_one_process_with_eight_devices(tmp_path):
  steps = 4
  mesh = ("Partitioner.num_partitions=2", "train/DatasetConfig.num_data_shards=2")
  single = str(tmp_path / "single")
  harness.run_train(single, steps, mesh, devices=8)

  multi = str(tmp_path / "multi")
  port = harness.free_port()
  procs = [harness.popen_train(
      multi, steps, mesh, devices=4, log_path=str(tmp_path / f"proc{i}.log"),
      extra_args=[f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}", "--cpu_collectives=gloo"]) for i in range(2)]
  for i, proc in enumerate(procs):
    assert proc.wait(timeout=600) == 0, open(tmp_path / f"proc{i}.log").read()[-4000:]

  expected, got = harness.losses(single), harness.losses(multi)
  assert sorted(got) == list(range(1, steps + 1))
  np.testing.assert_allclose([got[s] for s in sorted(got)],
                             [expected[s] for s in sorted(got)], rtol=1e-5)
  harness.assert_trees_close(harness.checkpointed_params(multi, steps),
                             harness.checkpointed_params(single, steps), rtol=1e-4, atol=1e-6)


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path):
  model_dir = str(tmp_path / "nan")
  # A learning rate of 1e30 without clipping blows the parameters up after warm-up step 0.
  result = harness.run_train(model_dir, 20, (
      "LEARNING_RATE=1e30", "WARMUP_STEPS=2", "create_optimizer.clip_norm=None",
      "CheckpointManager.save_interval_steps=1"), check=False)
  assert result.returncode != 0
  assert "non-finite training metrics at step" in result.stderr
  assert "last good checkpoint" in result.stderr
  checkpoint_dir = os.path.join(model_dir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(checkpoint_dir) if d.isdigit())
  assert steps, "no checkpoint was kept"
  params = harness.checkpointed_params(model_dir, steps[-1])
  import jax
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def _train_cli(*args):
  cmd = [sys.executable, "-m", "musiclm_jax.train", *args]
  return subprocess.run(cmd, cwd=harness.REPO, env=harness.env_with_devices(1),
                        capture_output=True, text=True, timeout=300)


def test_missing_gin_file_is_a_clear_error(tmp_path):
  result = _train_cli("--gin_file=lm/no_such_size.gin", f"--gin.MODEL_DIR='{tmp_path}'")
  assert result.returncode == 2
  assert "lm/no_such_size.gin" in result.stderr and "not found" in result.stderr


def test_unknown_binding_is_a_clear_error(tmp_path):
  result = _train_cli(*[f"--gin_file={f}" for f in harness.TINY_LM_GIN],
                      f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=2",
                      "--gin.Trainer.no_such_option=3")
  assert result.returncode == 2
  assert "Trainer.no_such_option" in result.stderr
  assert not os.listdir(tmp_path)  # nothing was started, nothing written
