"""Trainer: sharded initialisation and jitted train / eval steps (cf. `t5x.trainer`).

One train step, for each optimizer group in order (one group for ordinary models; e.g.
'discriminator' then 'generator' for a GAN):
  1. gradients of `model.loss_fn(..., group=g)` with respect to that group's parameters,
     accumulated over `num_microbatches` slices of the batch with `lax.scan`;
  2. the group's optax chain (global-norm clipping, optimizer, schedule);
  3. the updated parameters are visible to the next group's loss.
Then the exponential moving average of all parameters. Parameters stay float32 (master
weights); the model's modules compute in their configured dtype (bfloat16 for speed).
"""

from __future__ import annotations

import functools
from typing import Any, Hashable, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from musiclm_jax.training import models as models_lib
from musiclm_jax.training import partitioning
from musiclm_jax.training.train_state import TrainState

PyTree = Any


def split_params(params: Mapping[str, PyTree], collections: Optional[Sequence[str]]):
  """Splits a params dict into (selected top-level collections, the rest)."""
  if collections is None:
    return dict(params), {}
  missing = [c for c in collections if c not in params]
  if missing:
    raise KeyError(f"Optimizer group names parameter collections {missing} that the model "
                   f"does not have; top-level params are {sorted(params)}")
  selected = {k: v for k, v in params.items() if k in collections}
  rest = {k: v for k, v in params.items() if k not in collections}
  return selected, rest


def _microbatch_slices(batch: Mapping[str, jax.Array], num_microbatches: int):
  """[B, ...] -> [num_microbatches, B / num_microbatches, ...] without moving data.

  Microbatch i takes rows i, i + n, i + 2n, ...: every device keeps its own rows, so a batch
  sharded over 'data' splits into microbatches that are sharded the same way.
  """
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by "
                       f"num_microbatches={num_microbatches}")
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, batch)


def ema_decay_at(ema_decay: float, step: jax.Array) -> jax.Array:
  """The EMA decay for the update after `step` steps: min(ema_decay, (1 + step) / (10 + step)).

  The warm-up of TF's ExponentialMovingAverage(num_updates=step). Without it a 0.999 EMA
  after 300 steps would still be 0.999 ** 300 = 74% the random initialisation; with it the
  initialisation's share is gone within a few dozen steps, so short runs export trained
  weights and long runs still average over the last ~1 / (1 - ema_decay) steps.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


@gin.configurable
class Trainer:
  """Compiles and runs train and eval steps for a `BaseModel` on a `Partitioner`'s mesh."""

  def __init__(self, model: models_lib.BaseModel, partitioner: partitioning.Partitioner,
               num_microbatches: int = 1, ema_decay: Optional[float] = None,
               seed: int = 0, eval_with_ema: bool = False):
    """Args:
      model: the model (module + losses + optimizer definitions).
      partitioner: mesh and sharding rules.
      num_microbatches: gradient accumulation steps within one train step.
      ema_decay: decay of the parameter EMA (e.g. 0.999), reached after a warm-up
        (`ema_decay_at`); None disables EMA.
      seed: the base of every random stream (init and per-step dropout); a step's randomness
        depends only on (seed, step), so resumed runs reproduce uninterrupted ones.
      eval_with_ema: evaluate the EMA parameters instead of the raw ones.
    """
    if num_microbatches < 1:
      raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
      raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    self.model = model
    self.partitioner = partitioner
    self.num_microbatches = num_microbatches
    self.ema_decay = ema_decay
    self.seed = seed
    self.eval_with_ema = eval_with_ema
    self.groups = dict(model.optimizer_groups)
    self._state_shardings = None
    self._compiled = {}

  # ---- initialisation ----------------------------------------------------------------------

  def _init_boxed_state(self, rng: jax.Array, input_shapes, input_types,
                        pretrained=None) -> TrainState:
    variables = self.model.get_initial_variables(rng, input_shapes, input_types)
    variables = dict(variables)
    params = variables.pop("params")
    if pretrained is not None:
      params = models_lib.merge_pretrained_params(params, pretrained)
    opt_states = {}
    for group, collections in self.groups.items():
      selected, _ = split_params(params, collections)
      opt_states[group] = self.model.optimizer_for_group(group).init(selected)
    return TrainState.create(params, opt_states, use_ema=self.ema_decay is not None,
                             flax_mutables=variables)

  def abstract_state(self, input_shapes: Mapping[str, Tuple[int, ...]],
                     input_types: Optional[Mapping[str, Any]] = None):
    """(abstract unboxed TrainState with shardings, state shardings), no memory allocated."""
    boxed = jax.eval_shape(
        lambda: self._init_boxed_state(jax.random.key(self.seed), input_shapes, input_types))
    shardings = self.partitioner.sharding_of_boxed(boxed)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.meta.unbox(boxed), shardings)
    self._state_shardings = shardings
    return abstract, shardings

  def create_state(self, input_shapes: Mapping[str, Tuple[int, ...]],
                   input_types: Optional[Mapping[str, Any]] = None) -> TrainState:
    """Initialises the state directly in its sharded layout (no host copy of the params),
    with the model's `pretrained_params` (passed in as arguments, not baked in as
    constants) in place of the random ones."""
    _, shardings = self.abstract_state(input_shapes, input_types)
    pretrained = self.model.pretrained_params()
    init = self.partitioner.partition(
        lambda rng, pre: nn.meta.unbox(
            self._init_boxed_state(rng, input_shapes, input_types, pre)),
        in_shardings=None, out_shardings=shardings, runs_once=True)
    return init(jax.random.key(self.seed), pretrained)

  @property
  def state_shardings(self):
    if self._state_shardings is None:
      raise RuntimeError("call create_state or abstract_state first")
    return self._state_shardings

  # ---- the steps ---------------------------------------------------------------------------

  def _loss_and_grads(self, model: models_lib.BaseModel, group: str, selected, rest,
                      mutables, batch, rng):
    """Mean loss, summed metrics, mean gradients and updated mutables over microbatches.

    Microbatches run in sequence, each seeing the mutables (e.g. EMA codebooks) the
    previous one left, exactly as if they were consecutive small steps of that state.
    """
    def loss_of(sub, micro_mutables, micro_batch, micro_rng):
      return model.loss_fn_with_mutables({**rest, **sub}, micro_mutables, micro_batch,
                                         micro_rng, group=group)
    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    if self.num_microbatches == 1:
      (loss, (metrics, mutables)), grads = grad_fn(selected, mutables, batch, rng)
      return loss, metrics, grads, mutables

    micro = _microbatch_slices(batch, self.num_microbatches)

    def body(carry, xs):
      loss_acc, metrics_acc, grads_acc, micro_mutables = carry
      index, micro_batch = xs
      (loss, (metrics, micro_mutables)), grads = grad_fn(
          selected, micro_mutables, micro_batch, jax.random.fold_in(rng, index))
      return (loss_acc + loss, jax.tree.map(jnp.add, metrics_acc, metrics),
              jax.tree.map(jnp.add, grads_acc, grads), micro_mutables), None

    first = jax.tree.map(lambda x: x[0], micro)
    (_, (metrics_shape, _)), _ = jax.eval_shape(grad_fn, selected, mutables, first, rng)
    zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
    init = (jnp.zeros((), jnp.float32), zeros(metrics_shape),
            jax.tree.map(jnp.zeros_like, selected), mutables)
    (loss, metrics, grads, mutables), _ = jax.lax.scan(
        body, init, (jnp.arange(self.num_microbatches), micro))
    scale = 1.0 / self.num_microbatches
    return loss * scale, metrics, jax.tree.map(lambda g: g * scale, grads), mutables

  def _train_step(self, model: models_lib.BaseModel, state: TrainState, batch
                  ) -> Tuple[TrainState, dict]:
    """One step of `model` (self.model for the state's training phase)."""
    step_rng = jax.random.fold_in(jax.random.key(self.seed), state.step)
    params = state.params
    mutables = dict(state.flax_mutables)
    opt_states = dict(state.opt_states)
    metrics = {}
    single = len(self.groups) == 1
    for index, (group, collections) in enumerate(self.groups.items()):
      selected, rest = split_params(params, collections)
      loss, group_metrics, grads, mutables = self._loss_and_grads(
          model, group, selected, rest, mutables, batch, jax.random.fold_in(step_rng, index))
      optimizer = self.model.optimizer_for_group(group)
      updates, opt_states[group] = optimizer.update(grads, opt_states[group], selected)
      params = {**rest, **optax.apply_updates(selected, updates)}
      prefix = "" if single else f"{group}/"
      metrics[prefix + "loss"] = loss
      metrics[prefix + "grad_norm"] = optax.tree.norm(grads)
      metrics.update({prefix + k: v for k, v in group_metrics.items()})

    ema = state.ema_params
    if ema is not None:
      decay = ema_decay_at(self.ema_decay, state.step)
      ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
    new_state = state.replace(step=state.step + 1, params=params, opt_states=opt_states,
                              ema_params=ema, flax_mutables=mutables)
    return new_state, metrics

  def _eval_step(self, state: TrainState, batch) -> dict:
    _, metrics = self.model.eval_fn_with_mutables(
        state.params_for_inference(self.eval_with_ema), dict(state.flax_mutables), batch)
    return dict(metrics)

  def _compiled_step(self, name: str, fn, batch, donate: bool, phase: Hashable = None):
    key = (name, phase, jax.tree.structure(batch),
           tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(batch)))
    if key not in self._compiled:
      batch_shardings = jax.tree.map(
          lambda x: self.partitioner.data_sharding(x.ndim), batch)
      out = (self.state_shardings, None) if name == "train" else None
      self._compiled[key] = self.partitioner.partition(
          fn, in_shardings=(self.state_shardings, batch_shardings), out_shardings=out,
          donate_argnums=(0,) if donate else ())
    return self._compiled[key]

  def train_step(self, state: TrainState, batch) -> Tuple[TrainState, dict]:
    """One optimizer step on a global batch (arrays sharded over 'data'). Donates `state`.

    Compiled once per training phase of the model (`BaseModel.training_phase`).
    """
    phase = self.model.training_phase(state)
    step = functools.partial(self._train_step, self.model.for_phase(phase))
    return self._compiled_step("train", step, batch, donate=True, phase=phase)(state, batch)

  def lower_train_step(self, abstract_state, abstract_batch, phase: Hashable = None,
                       platforms: Optional[Sequence[str]] = None):
    """The train step lowered for a state and batch of ShapeDtypeStructs (nothing
    allocated): `.compile().memory_analysis()` gives its per-device memory, `.as_text()`
    its program. `platforms`: lower for those instead of the mesh's (read only; e.g. a TPU
    program on a CPU host). For layout and memory studies (benchmarks/memory_layouts.py)."""
    step = functools.partial(self._train_step, self.model.for_phase(phase))
    return self._compiled_step("train", step, abstract_batch, donate=True,
                               phase=phase).lower(abstract_state, abstract_batch,
                                                  platforms=platforms)

  def summaries(self, state: TrainState, host_batch) -> dict:
    """The model's TensorBoard media for the first examples of a host batch (host arrays)."""
    params = state.params_for_inference(self.eval_with_ema)
    with self.partitioner.activation_context():
      media = self.model.summaries(params, dict(state.flax_mutables),
                                   _first_examples(host_batch))
    return jax.device_get(media)

  def eval_step(self, state: TrainState, batch) -> dict:
    """Summed eval metrics of a global batch."""
    return self._compiled_step("eval", self._eval_step, batch, donate=False)(state, batch)


def _first_examples(batch, count: int = 2):
  return jax.tree.map(lambda x: x[:count], batch)


def metrics_are_finite(metrics: Mapping[str, Any]) -> bool:
  """True when every scalar metric (loss, grad_norm, ...) is finite."""
  return all(bool(jnp.all(jnp.isfinite(jnp.asarray(v)))) for v in jax.tree.leaves(metrics))
