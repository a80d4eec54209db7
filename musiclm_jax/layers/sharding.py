"""Fitting a PartitionSpec to an array's shape on a mesh (shared by the partitioner and by
layers that call a kernel per shard)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from jax.sharding import PartitionSpec as P


def fit_spec(spec: P, shape: Sequence[int], mesh_shape: Mapping[str, int]) -> P:
  """`spec` without the mesh axes of size 1 and, per dimension, without the axes (from the
  last) whose product does not divide it: such a dimension stays whole on them."""
  entries = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = [] if axes is None else [axes] if isinstance(axes, str) else list(axes)
    axes = [a for a in axes if mesh_shape[a] > 1]
    while axes and dim % int(np.prod([mesh_shape[a] for a in axes])):
      axes.pop()
    entries.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return P(*entries)
