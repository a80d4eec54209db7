"""Content fingerprints of parameter trees (which weights made a derived file) and of files."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

import jax
import numpy as np


def pytree_fingerprint(tree: Any) -> str:
  """A 16-hex-digit BLAKE2b hash of a pytree's leaves: their paths, dtypes, shapes and bytes.

  Equal trees (the same arrays under the same names) give equal fingerprints wherever they
  were loaded from; any changed value, shape, dtype or name gives another. Reads every
  byte once (about a second per GB on one core)."""
  digest = hashlib.blake2b(digest_size=8)
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
    digest.update(array.reshape(-1).view(np.uint8))
  return digest.hexdigest()


def files_fingerprint(paths: Sequence[str]) -> str:
  """A 16-hex-digit BLAKE2b hash of files' contents, for telling a remade output from an
  identical one: `.npz` files by their arrays (the zip container stamps the time it was
  written), other files by their bytes, folders by their files' relative paths and
  contents."""
  digest = hashlib.blake2b(digest_size=8)

  def add_file(path: str, name: str) -> None:
    digest.update(f"{name}|".encode())
    if path.endswith(".npz"):
      with np.load(path) as arrays:
        digest.update(pytree_fingerprint({k: arrays[k] for k in sorted(arrays.files)}).encode())
      return
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)

  for i, path in enumerate(paths):
    if os.path.isdir(path):
      for root, dirs, files in os.walk(path):
        dirs.sort()
        for file in sorted(files):
          full = os.path.join(root, file)
          add_file(full, f"{i}/{os.path.relpath(full, path)}")
    else:
      add_file(path, str(i))
  return digest.hexdigest()
