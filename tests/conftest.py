"""Shared pytest set-up (shared file: the LM tests and the core tests both rely on it).

Every test process sees 8 simulated CPU devices, so multi-device behaviour is tested on one
machine; tests that want one device build their Partitioner with `devices=jax.devices()[:1]`.
Subprocesses started by tests set their own device count (see tests/harness.py).
"""

import os

# Compile for compile speed: most of the suite's time is XLA:CPU compiling programs that
# then run a few steps on tiny shapes. LLVM optimisation level 0 and XLA's older fusion
# emitters bring the tiny codec's GAN train step to its first result (trace + compile) in 38 s
# instead of ~78 s (2-core EPYC); its later steps take 1.5x as long. Subprocesses started
# by tests inherit these flags (tests/harness.py).
os.environ.setdefault("XLA_FLAGS", " ".join([
    "--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
    "--xla_cpu_use_fusion_emitters=false"]))
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


# tests/unit/: one function or module at a time, seconds each. tests/integration/: trained
# models, built datasets, entry points in subprocesses, the wheel, the browser (minutes per
# file). `make test` runs both; `make test-unit` the first (`-m "not integration"` also works).
def pytest_configure(config):
  config.addinivalue_line("markers", "slow: multi-process / subprocess tests (seconds each)")
  config.addinivalue_line("markers", "integration: a test under tests/integration/")


# The longest test files (minutes each on 2 cores), longest first. `make test` hands whole
# files to two workers in collection order: starting these first keeps one worker from being
# left with a long file while the other has finished.
LONGEST_FILES = ("test_soundstream.py", "test_mulan_training.py", "test_stage_training.py",
                 "test_train_e2e.py", "test_tokenize_job.py", "test_w2v_bert.py",
                 "test_generation.py")


def pytest_collection_modifyitems(items):
  for item in items:
    if item.path.parent.name == "integration":
      item.add_marker(pytest.mark.integration)
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable within a file


@pytest.fixture(scope="session")
def music_captions_tiny(tmp_path_factory) -> str:
  """TFDS data_dir holding the rendered captioned set music_captions/tiny_16khz, built once
  per test run and shared by every xdist worker (a file lock orders them). Read-only."""
  import fcntl
  from musiclm_jax.tasks import builders
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent   # the workers' common base folder
  data_dir = root / "shared_music_captions_tiny"
  with open(root / "shared_music_captions_tiny.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builders.build("music_captions", str(data_dir), "tiny_16khz")  # no-op once built
  return str(data_dir)


@pytest.fixture
def single_device():
  import jax
  return jax.devices()[:1]
