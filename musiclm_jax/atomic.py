"""Writing folders and files atomically: readers see the old version or the complete new one.

Every writer of the project goes through here: the new content is made under a temporary
name in the destination's folder (`.tmp-<name>-XXXX`, so a restarted job can find what a
killed one left) and renamed over the destination when complete; on any error the temporary
is removed and the destination is left as it was. Files and folders get the permissions the
user's umask gives a new file (Python's temporaries are private, 0600 / 0700, which would
hide a run's outputs from a serving process or another user).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
  """The process's umask (reading it means setting it: done under a lock)."""
  with _UMASK_LOCK:
    mask = os.umask(0o022)
    os.umask(mask)
  return mask


def _parent(path: str) -> str:
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  return parent


@contextlib.contextmanager
def atomic_file(path: str, suffix: str = ""):
  """Yields a temporary file name beside `path` (the file exists, empty, with the umask's
  permissions); on success it replaces `path`, on error it is removed. `suffix` is for
  writers that pick the format by extension (soundfile, np.save)."""
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path}: is a folder (give the name of a file to write)")
  fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", suffix=suffix,
                             dir=_parent(path))
  os.close(fd)
  try:
    os.chmod(tmp, 0o666 & ~_umask())
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def atomic_directory(path: str, prefix: str = ".tmp-"):
  """Yields a temporary folder beside `path`; on success it replaces `path` (rename), on
  error it is removed and `path` is left as it was."""
  tmp = tempfile.mkdtemp(prefix=prefix, dir=_parent(path))
  try:
    os.chmod(tmp, 0o777 & ~_umask())
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
  """Writes a text file atomically (`atomic_file`)."""
  with atomic_file(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes a binary file atomically (`atomic_file`)."""
  with atomic_file(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
