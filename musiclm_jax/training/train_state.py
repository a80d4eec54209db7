"""The training state: step, parameters, optimizer states, EMA and other Flax collections.

A pytree (`flax.struct.dataclass`), so it is jitted, sharded and checkpointed as one object.
`opt_states` is keyed by optimizer group (one entry for ordinary models; 'generator' and
'discriminator' for GANs).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax
import jax
import jax.numpy as jnp

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Attributes:
    step: int32 scalar, number of optimizer steps taken.
    params: float32 master parameters (unboxed Flax 'params' collection).
    opt_states: optimizer group name -> optax state.
    ema_params: exponential moving average of params, or None when EMA is off.
    flax_mutables: other Flax collections carried between steps (e.g. quantizer state).
  """
  step: jax.Array
  params: PyTree
  opt_states: Mapping[str, PyTree]
  ema_params: Optional[PyTree] = None
  flax_mutables: Mapping[str, PyTree] = flax.core.FrozenDict()

  @classmethod
  def create(cls, params: PyTree, opt_states: Mapping[str, PyTree], use_ema: bool,
             flax_mutables: Optional[Mapping[str, PyTree]] = None) -> "TrainState":
    ema = jax.tree.map(jnp.copy, params) if use_ema else None
    return cls(step=jnp.asarray(0, jnp.int32), params=params, opt_states=dict(opt_states),
               ema_params=ema, flax_mutables=dict(flax_mutables or {}))

  def params_for_inference(self, use_ema: bool = True) -> PyTree:
    """EMA parameters when available and asked for, otherwise the raw parameters."""
    return self.ema_params if (use_ema and self.ema_params is not None) else self.params
