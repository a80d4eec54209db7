"""Shared pytest set-up (shared file: the LM tests and the core tests both rely on it).

Every test process sees 8 simulated CPU devices, so multi-device behaviour is tested on one
machine; tests that want one device build their Partitioner with `devices=jax.devices()[:1]`.
Subprocesses started by tests set their own device count (see tests/harness.py).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: multi-process / subprocess tests (seconds each)")


@pytest.fixture
def single_device():
  import jax
  return jax.devices()[:1]
