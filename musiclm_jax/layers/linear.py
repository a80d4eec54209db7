"""Dense projections and normalisation (RMSNorm, LayerNorm) with logical axis names and mixed precision.

Parameters are float32 master weights; the computation runs in `dtype` (bfloat16 for
speed on TPU/GPU). Every kernel names its axes so the `Partitioner`'s rules can shard it.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def fan_in_normal(fan_in: int, scale: float = 1.0):
  """Initialiser N(0, scale / fan_in): unit-variance outputs for unit-variance inputs."""
  return nn.initializers.normal(stddev=float(np.sqrt(scale / fan_in)))


class DenseGeneral(nn.Module):
  """Contracts the last `contract_dims` axes of x with a kernel of shape [*in, *features].

  Attributes:
    features: output feature shape, e.g. (heads, head_dim) or embed.
    kernel_axes: logical names of the kernel's axes (len = contract_dims + len(features)).
    contract_dims: how many trailing input axes are contracted.
    dtype: computation dtype.
    init_scale: multiplies the fan-in variance of the initialiser.
    use_bias: add a bias of shape `features` (axes kernel_axes[contract_dims:]), zero-init.
  """
  features: int | Sequence[int]
  kernel_axes: Tuple[str, ...]
  contract_dims: int = 1
  dtype: jnp.dtype = jnp.float32
  init_scale: float = 1.0
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    in_shape = x.shape[x.ndim - self.contract_dims:]
    kernel_shape = tuple(in_shape) + features
    if len(self.kernel_axes) != len(kernel_shape):
      raise ValueError(f"{self.name}: kernel_axes {self.kernel_axes} do not match kernel "
                       f"shape {kernel_shape}")
    init = fan_in_normal(int(np.prod(in_shape)), self.init_scale)
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes),
                        kernel_shape, jnp.float32)
    contract = (tuple(range(x.ndim - self.contract_dims, x.ndim)),
                tuple(range(self.contract_dims)))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            (contract, ((), ())))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros, self.kernel_axes[self.contract_dims:]), features, jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class RMSNorm(nn.Module):
  """T5's layer norm: scale by the root mean square, no centring, no bias (float32 math)."""
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (x32 * scale).astype(self.dtype)


class LayerNorm(nn.Module):
  """Layer norm over the last axis (float32 math) with a named scale and bias.

  Attributes:
    axis_name: logical name of the normalised axis ('embed' or 'mlp').
    epsilon: added to the variance.
    dtype: output dtype.
  """
  axis_name: str = "embed"
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    features = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                             (self.axis_name,)),
                       (features,), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           (self.axis_name,)),
                      (features,), jnp.float32)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale + bias).astype(self.dtype)
