"""Content fingerprints of parameter trees: which weights made a derived file."""

from __future__ import annotations

import hashlib
from typing import Any

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
