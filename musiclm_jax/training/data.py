"""Input pipeline glue: SeqIO dataset -> per-host numpy batches with a resumable position.

The data is split into `num_data_shards` logical shards (`seqio.ShardInfo`); each host
reads a contiguous, disjoint block of them, and the global batch is the concatenation of
one per-shard batch from every shard, in shard order. So the stream of global batches
depends on `num_data_shards`, not on how many hosts read it: the same run on 1 host or 8
(or resumed on another host count) sees the same data. `Partitioner.shard_batch` assembles
the per-host rows into global arrays.

The position is the number of batches consumed. Because the pipeline is deterministic for
its seed (SeqIO shuffles with a fixed seed), restoring a position rebuilds the pipeline and
skips that many batches: a resumed run sees exactly the batches an uninterrupted run would
have seen. The saved state is a few bytes, unlike tf.data's own iterator checkpoints,
which store the shuffle buffer.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Mapping, Optional

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf
from absl import logging

import musiclm_jax


def hide_gpus_from_tensorflow() -> None:
  """Hides GPUs from TensorFlow, which here only feeds input pipelines: a CUDA-enabled
  TensorFlow otherwise reserves most of each GPU's memory on its first op, and JAX then
  runs out of memory (what T5X and big_vision do at start-up too). Call before any TF op."""
  try:
    # Listing the devices makes TF probe CUDA now, under the quiet block, not at its first op.
    with musiclm_jax.quiet_tensorflow_notices():
      tf.config.list_physical_devices("GPU")
      tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF has already started its devices: too late to hide them.
    if tf.config.get_visible_devices("GPU"):
      logging.warning("TensorFlow already uses %s; it may hold GPU memory JAX needs",
                      tf.config.get_visible_devices("GPU"))


@gin.configurable
@dataclasses.dataclass
class DatasetConfig:
  """What to read (the names of `t5x.utils.DatasetConfig`).

  Attributes:
    mixture_or_task_name: a registered SeqIO task or mixture.
    task_feature_lengths: e.g. {'prefix_tokens': 3, 'targets': 64}.
    split: dataset split.
    batch_size: GLOBAL batch size (all hosts together).
    shuffle: shuffle examples (with `seed`).
    seed: shuffle seed; fixed so that runs and resumes are reproducible.
    use_cached: read a `seqio` cache prepared offline.
    num_epochs: None repeats forever (training); 1 for evaluation.
    num_data_shards: logical data shards; None = one per process. Must be a multiple of
      the process count and divide batch_size.
  """
  mixture_or_task_name: str = "synthetic_arpeggios"
  task_feature_lengths: Mapping[str, int] = dataclasses.field(default_factory=dict)
  split: str = "train"
  batch_size: int = 8
  shuffle: bool = True
  seed: Optional[int] = 0
  use_cached: bool = False
  num_epochs: Optional[int] = None
  num_data_shards: Optional[int] = None


def get_dataset(config: DatasetConfig, feature_converter: seqio.FeatureConverter,
                process_index: Optional[int] = None, process_count: Optional[int] = None
                ) -> tf.data.Dataset:
  """This host's batched `tf.data.Dataset` of model features ([batch / hosts, ...])."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  num_shards = config.num_data_shards or process_count
  if num_shards % process_count:
    raise ValueError(f"num_data_shards={num_shards} is not a multiple of the "
                     f"{process_count} processes")
  if config.batch_size % num_shards:
    raise ValueError(f"global batch_size={config.batch_size} is not divisible by "
                     f"num_data_shards={num_shards}")
  name = config.mixture_or_task_name
  if name not in seqio.MixtureRegistry.names() and name not in seqio.TaskRegistry.names():
    raise ValueError(f"Unknown SeqIO task or mixture {name!r}; registered tasks: "
                     f"{sorted(seqio.TaskRegistry.names())}")
  shards_per_host = num_shards // process_count
  per_shard_batch = config.batch_size // num_shards

  def shard_dataset(shard_id: int) -> tf.data.Dataset:
    ds = seqio.get_dataset(
        name, task_feature_lengths=dict(config.task_feature_lengths),
        dataset_split=config.split, shuffle=config.shuffle, num_epochs=config.num_epochs,
        feature_converter=feature_converter,
        shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards),
        use_cached=config.use_cached, seed=config.seed)
    return ds.batch(per_shard_batch, drop_remainder=True)

  first = process_index * shards_per_host
  shards = [shard_dataset(s) for s in range(first, first + shards_per_host)]
  if len(shards) == 1:
    return shards[0]
  return tf.data.Dataset.zip(tuple(shards)).map(
      lambda *batches: {k: tf.concat([b[k] for b in batches], axis=0) for k in batches[0]})


class DataIterator:
  """numpy batches from a dataset factory, with a position that can be saved and restored."""

  def __init__(self, dataset_fn: Callable[[], tf.data.Dataset]):
    self._dataset_fn = dataset_fn
    self._batches_consumed = 0
    self._iterator = self._make_iterator(0)

  def _make_iterator(self, skip: int) -> Iterator:
    ds = self._dataset_fn()
    if skip:
      ds = ds.skip(skip)
    return iter(ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator())

  def __iter__(self):
    return self

  def __next__(self) -> Mapping[str, np.ndarray]:
    batch = next(self._iterator)
    self._batches_consumed += 1
    return batch

  def get_state(self) -> dict:
    return {"batches_consumed": self._batches_consumed}

  def set_state(self, state: Mapping[str, int]) -> None:
    consumed = int(state.get("batches_consumed", 0))
    if consumed < 0:
      raise ValueError(f"invalid data iterator state {dict(state)}")
    self._batches_consumed = consumed
    self._iterator = self._make_iterator(consumed)


def input_shapes_and_types(dataset, global_batch_size: int):
  """Global input shapes/dtypes from a per-host batched dataset's element_spec."""
  spec = dataset.element_spec
  shapes = {k: (global_batch_size,) + tuple(v.shape[1:]) for k, v in spec.items()}
  types = {k: v.dtype.as_numpy_dtype for k, v in spec.items()}
  return shapes, types
