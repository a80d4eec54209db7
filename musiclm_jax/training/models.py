"""T5X-style model API: a Flax module plus the functions the trainer calls.

A `BaseModel` owns a Flax `nn.Module` and its optimizer definition(s). The trainer never
touches the module directly: it calls `get_initial_variables`, `loss_fn`, `eval_fn`,
`predict_batch` and `score_batch`, exactly the contract of `t5x.models.BaseModel`, so a
T5X user finds the same seams here.

Models trained with more than one optimizer (GAN generator/discriminator) name their
*optimizer groups*: each group is a set of top-level parameter collections with its own
optax transformation and its own loss (`loss_fn(..., group=name)`). The trainer updates the
groups in the declared order within one step.
"""

from __future__ import annotations

import abc
from typing import Any, Hashable, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any
Batch = Mapping[str, jnp.ndarray]
Metrics = Mapping[str, jnp.ndarray]

DEFAULT_GROUP = "default"


class BaseModel(abc.ABC):
  """Wraps a module with loss, evaluation, scoring and prediction.

  Contract (as T5X):
    get_initial_variables(rng, input_shapes, input_types) -> variables (Flax dict, boxed
      with logical partitioning metadata).
    loss_fn(params, batch, dropout_rng, group=...) -> (scalar loss, metrics dict).
      Metrics are *summed* quantities plus weights (e.g. 'loss_sum', 'weight_sum') so that
      gradient accumulation and multi-device reduction stay exact; `metrics_to_scalars`
      turns them into averages.
    eval_fn(params, batch) -> (loss, metrics), deterministic.
    predict_batch(params, batch, rng, **decoder_params) -> predictions.
    score_batch(params, batch) -> per-example log-likelihood [batch].
  Beyond T5X: optimizer groups (below) and training phases (`training_phase`, `for_phase`:
  one compiled train step per phase, e.g. a GAN's discriminator warm-up).
  """

  def __init__(self, module, optimizer_def: optax.GradientTransformation |
               Mapping[str, optax.GradientTransformation]):
    self.module = module
    self.optimizer_def = optimizer_def

  # ---- optimizer groups -------------------------------------------------------------------

  @property
  def optimizer_groups(self) -> Mapping[str, Optional[Sequence[str]]]:
    """Group name -> top-level param collection names (None = all params).

    The default is one group holding every parameter.
    """
    return {DEFAULT_GROUP: None}

  def optimizer_for_group(self, group: str) -> optax.GradientTransformation:
    if isinstance(self.optimizer_def, Mapping):
      if group not in self.optimizer_def:
        raise KeyError(f"No optimizer defined for optimizer group {group!r}; "
                       f"have {sorted(self.optimizer_def)}")
      return self.optimizer_def[group]
    return self.optimizer_def

  # ---- non-parameter state ----------------------------------------------------------------

  @property
  def mutable_collections(self) -> Sequence[str]:
    """Flax collections besides 'params' that training updates (e.g. ('quantizer',) for
    EMA codebooks). They live in `TrainState.flax_mutables`, replicated, and are updated
    from the *global* batch inside the jitted step, so every device holds the same state.
    """
    return ()

  def loss_fn_with_mutables(self, params: PyTree, flax_mutables: Mapping[str, PyTree],
                            batch: Batch, dropout_rng: Optional[jax.Array],
                            group: str = DEFAULT_GROUP):
    """What the trainer differentiates: -> (loss, (metrics, new flax_mutables)).

    The default is `loss_fn` with the mutables passed through unchanged; models with
    `mutable_collections` override this (and read their state in `eval_fn_with_mutables`).
    """
    loss, metrics = self.loss_fn(params, batch, dropout_rng, group=group)
    return loss, (metrics, flax_mutables)

  # ---- training phases --------------------------------------------------------------------

  def training_phase(self, state) -> Hashable:
    """A static label of how the next train step trains, read on the host from the
    TrainState before the step (default None: every step alike).

    A model whose loss changes at known steps (a GAN's discriminator warm-up) returns one
    label per phase; the trainer compiles one step per label from `for_phase(label)`, so
    a phase traces only the work it does. (The alternatives cost: a zero weight still
    computes the unused terms and their gradients, and `lax.cond` runs its branches as
    nested computations, which XLA:CPU executes far slower: 10x for SoundStream's.)
    """
    del state
    return None

  def for_phase(self, phase: Hashable) -> "BaseModel":
    """The model whose `loss_fn_with_mutables` trains `phase` (default: this one)."""
    del phase
    return self

  def eval_fn_with_mutables(self, params: PyTree, flax_mutables: Mapping[str, PyTree],
                            batch: Batch) -> Tuple[jnp.ndarray, Metrics]:
    """Deterministic loss and metrics given the current non-parameter state."""
    del flax_mutables
    return self.eval_fn(params, batch)

  def summaries(self, params: PyTree, flax_mutables: Mapping[str, PyTree], batch: Batch
                ) -> Mapping[str, Mapping[str, Any]]:
    """Media for TensorBoard at evaluation time, from a few examples of `batch`:
    {'audio': {name: (wave [samples], sample_rate)}, 'images': {name: [height, width]}}.
    The default has none.
    """
    del params, flax_mutables, batch
    return {}

  def pretrained_params(self) -> Optional[Mapping[str, Any]]:
    """Arrays that replace parts of the freshly initialised params (a nested dict mirroring
    'params', e.g. {'text_encoder': {...}} for a pretrained BERT), or None.

    Used only when training starts from scratch; a resumed run restores its checkpoint.
    The trainer checks every path and shape (`merge_pretrained_params`).
    """
    return None

  # ---- the contract -----------------------------------------------------------------------

  @abc.abstractmethod
  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Tuple[int, ...]],
                            input_types: Optional[Mapping[str, Any]] = None) -> PyTree:
    """Returns the initial Flax variables (params and any other collection)."""

  @abc.abstractmethod
  def loss_fn(self, params: PyTree, batch: Batch, dropout_rng: Optional[jax.Array],
              group: str = DEFAULT_GROUP) -> Tuple[jnp.ndarray, Metrics]:
    """Loss to minimise for `group` and summed metrics."""

  def eval_fn(self, params: PyTree, batch: Batch) -> Tuple[jnp.ndarray, Metrics]:
    """Deterministic loss and metrics (no dropout)."""
    return self.loss_fn(params, batch, None)

  @abc.abstractmethod
  def predict_batch(self, params: PyTree, batch: Batch, rng: Optional[jax.Array] = None,
                    **decoder_params) -> Any:
    """Model predictions (e.g. sampled tokens) for a batch."""

  @abc.abstractmethod
  def score_batch(self, params: PyTree, batch: Batch) -> jnp.ndarray:
    """Per-example log-likelihood of the batch's targets, [batch]."""


def metrics_to_scalars(metrics: Mapping[str, Any]) -> dict:
  """Turns summed metrics into averages: 'x_sum' / 'weight_sum' -> 'x'; others as they are.

  Group-prefixed metrics ('generator/x_sum') divide by their own group's
  'generator/weight_sum'.
  """
  out = {}
  for name, value in metrics.items():
    prefix = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
    if name == prefix + "weight_sum":
      continue
    weight = metrics.get(prefix + "weight_sum")
    if name.endswith("_sum") and weight is not None:
      out[name[:-4]] = value / jnp.maximum(weight, 1e-9)
    else:
      out[name] = value
  return out


def merge_pretrained_params(params: PyTree, pretrained: Mapping[str, Any],
                            path: str = "params") -> PyTree:
  """`params` (boxed or plain nested dict) with the leaves of `pretrained` put in.

  Raises KeyError for a pretrained path the model lacks and ValueError for a shape that
  differs, naming the path.
  """
  out = dict(params)
  for key, value in pretrained.items():
    where = f"{path}/{key}"
    if key not in out:
      raise KeyError(f"pretrained parameter {where} has no counterpart in the model "
                     f"(have {sorted(out)})")
    target = out[key]
    if isinstance(value, Mapping):
      out[key] = merge_pretrained_params(target, value, where)
      continue
    boxed = isinstance(target, nn.meta.AxisMetadata)
    current = target.unbox() if boxed else target
    if tuple(current.shape) != tuple(jnp.shape(value)):
      raise ValueError(f"pretrained parameter {where} has shape {tuple(jnp.shape(value))}, "
                       f"the model's is {tuple(current.shape)}")
    new = jnp.asarray(value, current.dtype)
    out[key] = target.replace_boxed(new) if boxed else new
  return out
