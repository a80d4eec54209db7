"""The GPU throughput flags: known to this jaxlib's XLA (which aborts on an unknown flag),
merged under the user's own XLA_FLAGS, applied only where an NVIDIA driver is loaded."""

import os
import subprocess
import sys

from musiclm_jax.training import xla_flags


def test_this_jaxlib_knows_every_flag():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags.merged(""))
  run = subprocess.run(
      [sys.executable, "-c", "import jax.numpy as jnp; print(jnp.ones(3).sum())"],
      env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0 and run.stdout.strip() == "3.0", run.stderr[-2000:]
  assert len(xla_flags.GPU_THROUGHPUT_FLAGS) == env["XLA_FLAGS"].count("--xla_gpu_")


def test_flags_already_set_win_and_the_driver_decides(tmp_path):
  mine = "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/x"
  flags = xla_flags.merged(mine)
  assert flags.startswith(mine) and flags.count("latency_hiding_scheduler") == 1
  assert "--xla_gpu_enable_pipelined_all_gather=true" in flags
  environ = {"XLA_FLAGS": mine}
  assert not xla_flags.apply_gpu_flags(environ, driver=str(tmp_path / "absent"))
  assert environ["XLA_FLAGS"] == mine
  assert xla_flags.apply_gpu_flags(environ, driver=str(tmp_path))
  assert environ["XLA_FLAGS"] == flags
  environ = {"XLA_FLAGS": mine, xla_flags.OPT_OUT: "0"}
  assert not xla_flags.apply_gpu_flags(environ, driver=str(tmp_path))
