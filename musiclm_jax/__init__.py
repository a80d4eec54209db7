"""musiclm-jax: MusicLM (text-to-music) in JAX/Flax, built T5X-style."""

import contextlib as _contextlib
import importlib.abc as _abc
import importlib.util as _util
import os as _os
import re as _re
import sys as _sys
import tempfile as _tempfile

# TensorFlow only feeds the input pipelines (SeqIO/TFDS): silence its C++ start-up chatter
# (CUDA probing, oneDNN notices) unless the user asked for it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Where a CUDA-enabled TensorFlow is installed, it would reserve most of each GPU's memory on
# its first op and starve JAX: let it take only what it uses (the training entry points also
# hide the GPUs from it, `training.data.hide_gpus_from_tensorflow`).
_os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

__version__ = "0.1.0"

# TensorFlow's C++ logs a few lines while it loads and finds its devices (oneDNN, "no CUDA
# drivers", and on a machine without a GPU an ERROR that cuInit failed) before absl's logging
# is initialised, so TF_CPP_MIN_LOG_LEVEL does not reach them. Its import and its device
# start-up (`training.data.hide_gpus_from_tensorflow`) therefore run with the process's
# stderr captured; afterwards every other line is written back, and all of it on failure.
_TF_NOTICE = _re.compile(
    r"^(?:[IW]\d{4} [\d:. ]+\d+ \S+:\d+\] |WARNING: All log messages before "
    r"absl::InitializeLog\(\) is called|E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed "
    r"call to cuInit)")


@_contextlib.contextmanager
def quiet_tensorflow_notices():
  """Runs the block with fd 2 captured, then writes back all but TensorFlow's start-up
  notices (everything if the block raises, or if TF_CPP_MIN_LOG_LEVEL is 0)."""
  if int(_os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")) < 1:
    yield
    return
  _sys.stderr.flush()
  saved = _os.dup(2)
  with _tempfile.TemporaryFile("w+", errors="replace") as captured:
    _os.dup2(captured.fileno(), 2)
    failed = True
    try:
      yield
      failed = False
    finally:
      _sys.stderr.flush()
      _os.dup2(saved, 2)
      _os.close(saved)
      captured.seek(0)
      _sys.stderr.write("".join(line for line in captured
                                if failed or not _TF_NOTICE.match(line)))


class _QuietTensorFlowImport(_abc.MetaPathFinder, _abc.Loader):
  """Finds `tensorflow` once and loads it under `quiet_tensorflow_notices`."""

  def find_spec(self, name, path=None, target=None):
    if name != "tensorflow":
      return None
    _sys.meta_path.remove(self)
    spec = _util.find_spec(name)
    if spec is None or spec.loader is None:
      return spec
    self._loader, spec.loader = spec.loader, self
    return spec

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    with quiet_tensorflow_notices():
      self._loader.exec_module(module)


if not any(isinstance(f, _QuietTensorFlowImport) for f in _sys.meta_path):
  _sys.meta_path.insert(0, _QuietTensorFlowImport())
