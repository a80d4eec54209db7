"""Shared pytest set-up (shared file: the LM tests and the core tests both rely on it).

Every test process sees 8 simulated CPU devices, so multi-device behaviour is tested on one
machine; tests that want one device build their Partitioner with `devices=jax.devices()[:1]`.
Subprocesses started by tests set their own device count (see tests/harness.py).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA compilation cache for every test process (both xdist workers and the
# entry points tests start as subprocesses inherit it through the environment). Much of the
# suite's time is XLA:CPU compiling the same tiny programs in several processes: the tiny
# codec's initialisation takes ~20 s to compile and ~3 s to load from the cache. Entries are
# keyed by the program, the flags and the jax version, so a stale entry is never used;
# MUSICLM_TEST_XLA_CACHE='' turns it off.
_XLA_CACHE = os.environ.get(
    "MUSICLM_TEST_XLA_CACHE",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".xla_cache"))
if _XLA_CACHE:
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))   # LRU-evicted

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: multi-process / subprocess tests (seconds each)")


@pytest.fixture
def single_device():
  import jax
  return jax.devices()[:1]
