"""Optimizers and learning-rate schedules, configurable from gin.

`create_optimizer` returns one optax chain: global-norm clipping (applied to the
*accumulated* gradient, so clipping is independent of the number of microbatches), then the
optimizer with its schedule. GAN-style models bind one optimizer per optimizer group.
"""

from __future__ import annotations

from typing import Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import optax


@gin.configurable
def create_schedule(kind: str = "warmup_cosine", peak_value: float = 1e-3,
                    warmup_steps: int = 0, decay_steps: int = 100_000,
                    end_value: float = 0.0) -> optax.Schedule:
  """Learning-rate schedule.

  kind: 'constant', 'warmup_cosine' (linear warm-up then cosine decay to end_value at
    decay_steps), 'warmup_rsqrt' (T5's inverse square root after warm-up) or
    'warmup_linear' (linear warm-up then linear decay).
  """
  if kind == "constant":
    if warmup_steps:
      return optax.linear_schedule(0.0, peak_value, warmup_steps)
    return optax.constant_schedule(peak_value)
  if kind == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, peak_value, max(warmup_steps, 1), max(decay_steps, warmup_steps + 1), end_value)
  if kind == "warmup_rsqrt":
    # Linear warm-up to peak_value, then peak_value * sqrt(warmup / step), as T5.
    warmup = max(warmup_steps, 1)
    return lambda step: peak_value * _rsqrt_after_warmup(step, warmup)
  if kind == "warmup_linear":
    return optax.join_schedules([
        optax.linear_schedule(0.0, peak_value, max(warmup_steps, 1)),
        optax.linear_schedule(peak_value, end_value, max(decay_steps - warmup_steps, 1)),
    ], [max(warmup_steps, 1)])
  raise ValueError(f"Unknown learning-rate schedule kind {kind!r}; expected one of "
                   "'constant', 'warmup_cosine', 'warmup_rsqrt', 'warmup_linear'")


def _rsqrt_after_warmup(step, warmup: int):
  """1 at the end of warm-up; linear before, inverse square root after."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.where(step < warmup, (step + 1.0) / warmup,
                   jnp.sqrt(warmup / jnp.maximum(step, 1.0)))


@gin.configurable
def create_optimizer(name: str = "adamw",
                     learning_rate: Optional[optax.ScalarOrSchedule] = None,
                     b1: float = 0.9, b2: float = 0.99, eps: float = 1e-8,
                     weight_decay: float = 0.0, clip_norm: Optional[float] = 1.0,
                     momentum: float = 0.9,
                     param_lr_multipliers: Optional[Mapping[str, float]] = None
                     ) -> optax.GradientTransformation:
  """One optax chain: clip_by_global_norm(clip_norm) -> optimizer(learning_rate).

  name: 'adamw', 'adam', 'adafactor', 'lion' or 'sgd'.
  learning_rate: a float or an optax schedule (default: `create_schedule()`).
  clip_norm: global-norm clip of the (accumulated) gradient; None disables it.
  param_lr_multipliers: {param path prefix: multiplier}, e.g. {'text_encoder': 0.1} for a
    pretrained tower at a tenth of the learning rate, or 0.0 to freeze it (frozen params
    keep no optimizer state and are left out of the clipping norm). Paths are '/'-joined
    param names; the longest matching prefix wins; a prefix matching nothing is an error.
  """
  opt = _base_optimizer(name, learning_rate, b1, b2, eps, weight_decay, momentum)
  if clip_norm is not None:
    opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
  if not param_lr_multipliers:
    return opt
  return with_param_multipliers(opt, dict(param_lr_multipliers))


def _base_optimizer(name, learning_rate, b1, b2, eps, weight_decay, momentum
                    ) -> optax.GradientTransformation:
  if learning_rate is None:
    learning_rate = create_schedule()
  if name == "adamw":
    opt = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  elif name == "adam":
    opt = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  elif name == "adafactor":
    opt = optax.adafactor(learning_rate, weight_decay_rate=weight_decay or None)
  elif name == "lion":
    opt = optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
  elif name == "sgd":
    opt = optax.sgd(learning_rate, momentum=momentum)
  else:
    raise ValueError(f"Unknown optimizer {name!r}; expected adamw, adam, adafactor, lion or sgd")
  return opt


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _multiplier_of(name: str, multipliers: Mapping[str, float]) -> float:
  matches = [p for p in multipliers if name == p or name.startswith(p.rstrip("/") + "/")]
  return float(multipliers[max(matches, key=len)]) if matches else 1.0


def with_param_multipliers(opt: optax.GradientTransformation,
                           multipliers: Mapping[str, float]) -> optax.GradientTransformation:
  """`opt` on the trainable params with per-prefix update scales; zero-multiplier prefixes
  frozen (`optax.set_to_zero`, no state)."""
  for prefix, value in multipliers.items():
    if value < 0:
      raise ValueError(f"param_lr_multipliers[{prefix!r}]={value} must be >= 0")

  def labels(params):
    # Parameters an outer transformation masked out (optax.MaskedNode) still count as
    # matches: nesting a freeze inside multipliers is no typo.
    names = [_path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(
        params, is_leaf=lambda x: isinstance(x, optax.MaskedNode))]
    unused = [p for p in multipliers
              if not any(n == p or n.startswith(p.rstrip("/") + "/") for n in names)]
    if unused:
      raise ValueError(f"param_lr_multipliers prefixes {unused} match no parameter; "
                       f"top-level params are {sorted({n.split('/')[0] for n in names})}")
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if _multiplier_of(_path_name(p), multipliers) == 0
        else "trained", params)

  def scale(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda p, u: u * _multiplier_of(_path_name(p), multipliers), updates), state

  scaled = optax.chain(opt, optax.GradientTransformation(lambda _: optax.EmptyState(), scale))
  return optax.multi_transform({"trained": scaled, "frozen": optax.set_to_zero()}, labels)
