"""Writing folders and files atomically: readers see the old version or the complete new one."""

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


def atomic_write_text(path: str, text: str) -> None:
  """Writes a text file via a temporary file and a rename: readers never see half of it,
  and a crash leaves the previous version."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
