"""Optimizers and learning-rate schedules, configurable from gin.

`create_optimizer` returns one optax chain: global-norm clipping (applied to the
*accumulated* gradient, so clipping is independent of the number of microbatches), then the
optimizer with its schedule. GAN-style models bind one optimizer per optimizer group.
"""

from __future__ import annotations

from typing import Optional

import gin
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
                     momentum: float = 0.9) -> optax.GradientTransformation:
  """One optax chain: clip_by_global_norm(clip_norm) -> optimizer(learning_rate).

  name: 'adamw', 'adam', 'adafactor', 'lion' or 'sgd'.
  learning_rate: a float or an optax schedule (default: `create_schedule()`).
  clip_norm: global-norm clip of the (accumulated) gradient; None disables it.
  """
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
  if clip_norm is None:
    return opt
  return optax.chain(optax.clip_by_global_norm(clip_norm), opt)
