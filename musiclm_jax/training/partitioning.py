"""Device mesh, logical axis rules and shardings for `jax.jit` (what `pjit` became).

Every parameter and key activation carries *logical* axis names ('batch', 'embed', 'mlp',
...). One table of rules maps them to the *mesh* axes; changing the parallelism layout is
a change of rules or mesh shape, never of model code. This mirrors
`t5x.partitioning.PjitPartitioner` and MaxText's mesh:

  data   pure data parallelism: parameters replicated, batch split
  fsdp   fully sharded data parallelism (ZeRO-3): the batch is split over it too, and every
         parameter with an 'embed' (or 'conv_in') axis is split along that axis, and with it
         its optimizer state and EMA copy; XLA all-gathers a layer's weights where the step
         uses them and reduce-scatters their gradients
  model  tensor parallelism over heads / mlp / vocab (Megatron-style)

`Partitioner(fsdp_parallel=-1)` (gin: `Partitioner.fsdp_parallel = -1`) puts every device
not in 'model' on 'fsdp'. A mesh axis that does not divide a parameter's dimension (or has
size 1) is left out of that parameter's sharding, so one table serves every size and mesh.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from musiclm_jax.layers import sharding

LogicalRules = Sequence[Tuple[str, Optional[str | Tuple[str, ...]]]]

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch is split over

# The one table: logical axis -> mesh axis (None = replicated). Flax resolves it per array,
# in order, using each mesh axis at most once: an activation ('batch', ..., 'embed') has
# 'fsdp' taken by its batch, so its embed stays whole; a weight ('embed', 'mlp') is split
# over 'fsdp' x 'model'.
STANDARD_LOGICAL_AXIS_RULES: LogicalRules = (
    ("batch", BATCH_AXES),
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", None),       # grouped-query key/value heads: few, so replicated
    ("kv", None),
    ("joined_kv", "model"),
    ("length", None),
    ("cache_length", None),
    ("relpos_buckets", None),
    ("conv_in", "fsdp"),
    ("conv_out", "model"),
    ("codebook", None),
    ("stack", None),
)


@gin.configurable
def standard_logical_axis_rules() -> LogicalRules:
  return STANDARD_LOGICAL_AXIS_RULES


def run_once_compiler_options(platform: str) -> Optional[Dict[str, Any]]:
  """XLA options for a program that runs once, where compiling is nearly all its cost.

  The initialisation is such a program: each parameter's random draw is its own chain of
  threefry fusions, hundreds in all, and on CPU LLVM's optimisation of them is most of the
  compile (the tiny codec's: 30 s at the default level, 9 s at level 0, 2-core Xeon; the
  values agree to float rounding). Other platforms keep their defaults.
  """
  return {"xla_backend_optimization_level": 0} if platform == "cpu" else None


@gin.configurable
class Partitioner:
  """Builds the mesh and hands `jax.jit` its shardings.

  Attributes:
    mesh: `jax.sharding.Mesh` with axes MESH_AXES ('data', 'fsdp', 'model').
    logical_axis_rules: the logical -> mesh table.
  """

  def __init__(self, num_partitions: int = 1, data_parallel: int = -1,
               logical_axis_rules: Optional[LogicalRules] = None,
               devices: Optional[Sequence[jax.Device]] = None, fsdp_parallel: int = 1):
    """Args:
      num_partitions: size of the 'model' axis (tensor parallelism).
      data_parallel: size of the 'data' axis; -1 = all remaining devices (1 when
        fsdp_parallel is -1).
      logical_axis_rules: overrides `STANDARD_LOGICAL_AXIS_RULES`.
      devices: devices to use (default: all global devices, every process).
      fsdp_parallel: size of the 'fsdp' axis (fully sharded data parallelism); -1 = all
        devices not in 'model' or an explicit data_parallel.
    """
    devices = list(devices) if devices is not None else jax.devices()
    if num_partitions < 1 or len(devices) % num_partitions:
      raise ValueError(f"num_partitions={num_partitions} does not divide the "
                       f"{len(devices)} available devices")
    if fsdp_parallel == -1:
      data_parallel = 1 if data_parallel == -1 else data_parallel
      if data_parallel < 1 or len(devices) % (data_parallel * num_partitions):
        raise ValueError(f"data_parallel={data_parallel} x num_partitions={num_partitions} "
                         f"does not divide the {len(devices)} available devices")
      fsdp_parallel = len(devices) // (data_parallel * num_partitions)
    if fsdp_parallel < 1 or (len(devices) // num_partitions) % fsdp_parallel:
      raise ValueError(f"fsdp_parallel={fsdp_parallel} does not divide the "
                       f"{len(devices) // num_partitions} devices outside 'model'")
    if data_parallel == -1:
      data_parallel = len(devices) // (num_partitions * fsdp_parallel)
    shape = (data_parallel, fsdp_parallel, num_partitions)
    if int(np.prod(shape)) != len(devices):
      raise ValueError(f"mesh data={data_parallel} x fsdp={fsdp_parallel} x model="
                       f"{num_partitions} needs {int(np.prod(shape))} devices, have "
                       f"{len(devices)}")
    self.mesh = jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                              devices=devices)
    self.logical_axis_rules = tuple(logical_axis_rules or STANDARD_LOGICAL_AXIS_RULES)

  # ---- mesh facts --------------------------------------------------------------------------

  @property
  def data_parallel_size(self) -> int:
    """How many ways a batch is split: 'data' x 'fsdp'."""
    return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  @property
  def fsdp_parallel_size(self) -> int:
    return self.mesh.shape["fsdp"]

  @property
  def model_parallel_size(self) -> int:
    return self.mesh.shape["model"]

  # ---- shardings ---------------------------------------------------------------------------

  def logical_to_mesh_sharding(self, logical_specs: Any) -> Any:
    """Tree of logical `PartitionSpec`s -> tree of `NamedSharding`s.

    Mapped spec by spec: flax's whole-tree version mistakes other tuples in the tree (such
    as optax's empty `MaskedNode` of frozen parameters) for specs.
    """
    return jax.tree.map(
        lambda spec: nn.logical_to_mesh_sharding(spec, self.mesh, self.logical_axis_rules),
        logical_specs, is_leaf=lambda x: isinstance(x, P))

  def sharding_of_boxed(self, boxed_tree: Any) -> Any:
    """Shardings for a tree whose leaves are (possibly) `nn.LogicallyPartitioned` boxes
    around arrays or ShapeDtypeStructs.

    Unboxed leaves are replicated. A box around an empty node (optax puts its `MaskedNode`
    for a frozen parameter inside the parameter's box) stays that empty node. Mesh axes
    that do not divide a dimension, or have size 1, are dropped from its sharding
    (`fit_spec`).
    """
    def spec(x):
      if not isinstance(x, nn.meta.AxisMetadata):
        return NamedSharding(self.mesh, P())
      value = x.unbox()
      if not jax.tree.leaves(value):
        return value
      logical = x.get_partition_spec()
      mesh_spec = nn.logical_to_mesh_axes(tuple(logical), self.logical_axis_rules)
      return NamedSharding(self.mesh, self.fit_spec(mesh_spec, value.shape))

    return jax.tree.map(spec, boxed_tree,
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))

  def fit_spec(self, spec: P, shape: Sequence[int]) -> P:
    """`spec` without the mesh axes of size 1 and, per dimension, without the axes (from
    the last) whose product does not divide it: such a dimension stays whole on them."""
    return sharding.fit_spec(spec, shape, self.mesh.shape)

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def data_sharding(self, ndim: int = 1) -> NamedSharding:
    """Sharding of an input array: leading (batch) axis over 'data' x 'fsdp', the rest
    replicated."""
    return NamedSharding(self.mesh, P(BATCH_AXES, *([None] * (ndim - 1))))

  # ---- moving data -------------------------------------------------------------------------

  def shard_batch(self, host_batch: Any) -> Any:
    """Host-local numpy batch -> global jax arrays sharded over 'data' x 'fsdp'.

    Each process passes its own slice of the global batch (process p holds rows
    [p * B/P, (p+1) * B/P)); on one process this is the whole batch.
    """
    def to_global(x):
      x = np.asarray(x)
      global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
      return jax.make_array_from_process_local_data(self.data_sharding(x.ndim), x,
                                                    global_shape)
    return jax.tree.map(to_global, host_batch)

  # ---- compiling ---------------------------------------------------------------------------

  @contextlib.contextmanager
  def activation_context(self):
    """Mesh and logical rules for tracing, so `nn.with_logical_constraint` resolves."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.logical_axis_rules):
      yield

  def partition(self, fn: Callable, in_shardings: Any, out_shardings: Any,
                static_argnums: Sequence[int] = (),
                donate_argnums: Sequence[int] = (),
                runs_once: bool = False) -> "PartitionedFn":
    """`jax.jit` with shardings, traced under this partitioner's mesh and rules.

    `runs_once`: the program runs once (e.g. the initialisation), so it is compiled for
    compile speed, not run speed (see `run_once_compiler_options`).
    """
    platform = self.mesh.devices.flat[0].platform
    options = run_once_compiler_options(platform) if runs_once else None
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                     static_argnums=static_argnums, donate_argnums=donate_argnums,
                     compiler_options=options)
    return PartitionedFn(jitted, self)


class PartitionedFn:
  """A jitted function that always runs (and traces) inside the partitioner's context."""

  def __init__(self, jitted: Callable, partitioner: Partitioner):
    self._jitted = jitted
    self._partitioner = partitioner

  def __call__(self, *args, **kwargs):
    with self._partitioner.activation_context():
      return self._jitted(*args, **kwargs)

  def lower(self, *args, platforms: Optional[Sequence[str]] = None, **kwargs):
    """`jax.jit(...).lower`; `platforms` (e.g. ('tpu',)) lowers for other platforms than
    the mesh's devices: a program to read (`.as_text()`), not to compile on this host."""
    with self._partitioner.activation_context():
      traced = self._jitted.trace(*args, **kwargs)
      return traced.lower(lowering_platforms=tuple(platforms) if platforms else None)
