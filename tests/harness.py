"""Runs the real entry points in subprocesses, with a chosen number of simulated devices,
and the real trainer in-process on one batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Optional, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_LM_GIN = ("lm/tiny.gin", "tasks/synthetic_arpeggios.gin", "runs/pretrain.gin")
# Small and quick: batch 8, checkpoints every 4 steps, no periodic eval.
FAST_BINDINGS = ("BATCH_SIZE=8", "train.eval_period=0", "CheckpointManager.save_interval_steps=4",
                 "CheckpointManager.max_to_keep=10")


def env_with_devices(devices: int) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={devices}", *flags])
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def train_command(model_dir: str, steps: int, bindings: Sequence[str] = (),
                  gin_files: Sequence[str] = TINY_LM_GIN, extra_args: Sequence[str] = ()):
  cmd = [sys.executable, "-m", "musiclm_jax.train"]
  cmd += [f"--gin_file={f}" for f in gin_files]
  cmd += [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}"]
  cmd += [f"--gin.{b}" for b in (*FAST_BINDINGS, *bindings)]
  return cmd + list(extra_args)


def run_train(model_dir: str, steps: int, bindings: Sequence[str] = (), devices: int = 1,
              check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
  result = subprocess.run(train_command(model_dir, steps, bindings, **kw), cwd=REPO,
                          env=env_with_devices(devices), capture_output=True, text=True,
                          timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f"training failed ({result.returncode}):\n{result.stderr[-4000:]}")
  return result


def popen_train(model_dir: str, steps: int, bindings: Sequence[str] = (), devices: int = 1,
                extra_args: Sequence[str] = (), log_path: Optional[str] = None,
                gin_files: Sequence[str] = TINY_LM_GIN):
  log = open(log_path or os.devnull, "w")
  return subprocess.Popen(train_command(model_dir, steps, bindings, gin_files, extra_args),
                          cwd=REPO, env=env_with_devices(devices), stdout=log,
                          stderr=subprocess.STDOUT, text=True)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def losses(model_dir: str) -> dict[int, float]:
  from musiclm_jax.training import metrics
  return {r["step"]: r["loss"] for r in metrics.read_metrics(model_dir, "train")}


def checkpointed_params(model_dir: str, step: int) -> dict:
  """The params saved at `step`, as numpy arrays, whatever topology wrote them."""
  from musiclm_jax.training import checkpoints
  return checkpoints.restore_numpy_state(model_dir, step)[1]["params"]


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
  import jax
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def train_on_batch(model, batch: np.ndarray, steps: int, devices=None, partitioner=None):
  """(trainer, state, per-step metrics) after `steps` of the core's Trainer on one audio
  batch [B, samples]; on one device unless `devices` (a data-parallel mesh over them) or a
  `partitioner` is given."""
  # pylint: disable=g-import-not-at-top  (the subprocess helpers above need no jax)
  import jax
  from musiclm_jax.training import partitioning, trainer as trainer_lib
  partitioner = partitioner or partitioning.Partitioner(devices=devices or jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner)
  state = trainer.create_state({"audio": batch.shape})
  sharded = partitioner.shard_batch({"audio": batch})
  history = []
  for _ in range(steps):
    state, metrics = trainer.train_step(state, sharded)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return trainer, state, history
