"""Writing folders atomically: readers see the old folder or the complete new one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_directory(path: str, prefix: str = ".tmp-"):
  """Yields a temporary folder beside `path`; on success it replaces `path` (rename), on
  error it is removed and `path` is left as it was."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
  try:
    yield tmp
    if os.path.exists(path):
      # Move the old folder aside first: a crash between the renames leaves it there
      # (`<path>.old-<pid>`), never neither folder.
      old = f"{path}.old-{os.getpid()}"
      os.replace(path, old)
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
