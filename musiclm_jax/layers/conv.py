"""Causal 1-D convolutions (plain and transposed) that can stream.

SoundStream's codec must run with low latency, so every convolution looks only at the past:
the plain conv pads on the left only, the transposed conv drops the samples that would spill
past the end of its input (EnCodec's causal mode). Because nothing looks ahead, a clip can
be processed in chunks: each module keeps what the next chunk needs from this one in the
'stream' collection (the last input samples for a conv, the last input frames for a
transposed conv, which it computes in polyphase form), starting from zeros, which is exactly the zero padding of the whole-clip
path. So chunked outputs, concatenated, equal the whole-clip outputs:

  state = {}
  for chunk in chunks:                       # chunk lengths: multiples of the stride
    y, state = module.apply({'params': params, **state}, chunk, streaming=True,
                            mutable=['stream'])

Start a new stream by dropping the 'stream' collection. The state holds the batch size of
the first chunk.

Frame alignment (stride s, effective kernel k_eff = (kernel_size - 1) * dilation + 1):
output frame i of `CausalConv1D` reads input samples [(i + 1) * s - k_eff, (i + 1) * s), so
it ends with the last sample of its own block of s inputs; there are time // s frames (any
trailing time % s samples are dropped; SEANet requires whole frames). Output sample j of
`CausalConvTranspose1D` depends on input frames <= j // s only.

Weight normalisation (Salimans & Kingma, as in SoundStream/EnCodec) is optional:
kernel = scale * v / ||v||, the norm taken per output channel over (width, in); `scale`
starts at ||v|| so the initial kernel is the same as without it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.layers import linear

KERNEL_AXES = (None, "conv_in", "conv_out")
_DIMENSION_NUMBERS = ("NWC", "WIO", "NWC")


def _kernel(module: nn.Module, shape, weight_norm: bool) -> jnp.ndarray:
  """Creates 'kernel' [width, in, out] (and 'scale' [out] with weight norm); float32."""
  init = linear.fan_in_normal(shape[0] * shape[1])
  v = module.param("kernel", nn.with_logical_partitioning(init, KERNEL_AXES), shape,
                   jnp.float32)
  if not weight_norm:
    return v
  norm = lambda w: jnp.sqrt(jnp.sum(jnp.square(w), axis=(0, 1)))
  scale = module.param(
      "scale", nn.with_logical_partitioning(lambda *_: norm(v), ("conv_out",)),
      (shape[2],), jnp.float32)
  return v * (scale / jnp.maximum(norm(v), 1e-12))


def _bias(module: nn.Module, features: int) -> jnp.ndarray:
  return module.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           ("conv_out",)),
                      (features,), jnp.float32)


class CausalConv1D(nn.Module):
  """Causal (left-padded) 1-D conv: [batch, time, in] -> [batch, time // stride, features].

  Attributes:
    features: output channels.
    kernel_size: taps of the kernel.
    stride: downsampling factor; needs (kernel_size - 1) * dilation + 1 >= stride.
    dilation: spacing between taps.
    dtype: computation dtype (parameters stay float32).
    use_bias: add a learned bias.
    weight_norm: weight-normalise the kernel (see the module docstring).
  """
  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  dtype: jnp.dtype = jnp.float32
  use_bias: bool = True
  weight_norm: bool = False

  @property
  def left_context(self) -> int:
    """Input samples before a frame's own block that it reads: k_eff - stride."""
    return (self.kernel_size - 1) * self.dilation + 1 - self.stride

  @nn.compact
  def __call__(self, x: jnp.ndarray, streaming: bool = False) -> jnp.ndarray:
    """Args:
      x: [batch, time, channels].
      streaming: take the left context from (and leave it in) the 'stream' collection
        instead of zero padding; time must then be a multiple of stride.
    Returns:
      [batch, time // stride, features].
    """
    pad = self.left_context
    if pad < 0:
      raise ValueError(f"{self.name}: effective kernel {pad + self.stride} is shorter than "
                       f"the stride {self.stride}")
    time = x.shape[1]
    if streaming and time % self.stride:
      raise ValueError(f"{self.name}: streaming chunk of {time} samples is not a multiple of "
                       f"the stride {self.stride}")
    if time < self.stride:
      raise ValueError(f"{self.name}: {time} input samples make no frame of stride "
                       f"{self.stride}")
    x = x[:, :time - time % self.stride].astype(self.dtype)
    kernel = _kernel(self, (self.kernel_size, x.shape[-1], self.features), self.weight_norm)

    if streaming and pad:
      buffer = self.variable("stream", "buffer", jnp.zeros, (x.shape[0], pad, x.shape[-1]),
                             self.dtype)
      x = jnp.concatenate([buffer.value.astype(self.dtype), x], axis=1)
      buffer.value = x[:, x.shape[1] - pad:]
    else:
      x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0)))

    y = jax.lax.conv_general_dilated(
        x, kernel.astype(self.dtype), window_strides=(self.stride,), padding="VALID",
        rhs_dilation=(self.dilation,), dimension_numbers=_DIMENSION_NUMBERS)
    if self.use_bias:
      y = y + _bias(self, self.features).astype(self.dtype)
    return y


class CausalConvTranspose1D(nn.Module):
  """Causal transposed conv: [batch, frames, in] -> [batch, frames * stride, features].

  The full transposed conv makes frames * stride + (kernel_size - stride) samples; the last
  kernel_size - stride would need the next frame's contribution too, so they are left to
  the next chunk (streaming) or dropped (whole clip). Computed in polyphase form (a conv
  over frames with stride * features outputs), with no zero-stuffing.

  Attributes:
    features: output channels.
    kernel_size: taps; needs kernel_size >= stride (SEANet uses 2 * stride).
    stride: upsampling factor.
    dtype: computation dtype (parameters stay float32).
    use_bias: add a learned bias.
    weight_norm: weight-normalise the kernel (see the module docstring).
  """
  features: int
  kernel_size: int
  stride: int
  dtype: jnp.dtype = jnp.float32
  use_bias: bool = True
  weight_norm: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, streaming: bool = False) -> jnp.ndarray:
    """Args:
      x: [batch, frames, channels].
      streaming: take the previous chunk's last input frames from the 'stream' collection
        (and leave this chunk's there) instead of zero padding.
    Returns:
      [batch, frames * stride, features].
    """
    stride = self.stride
    if self.kernel_size < stride:
      raise ValueError(f"{self.name}: kernel_size {self.kernel_size} is shorter than the "
                       f"stride {stride}")
    kernel = _kernel(self, (self.kernel_size, x.shape[-1], self.features), self.weight_norm)
    # Polyphase form: output sample t * s + r = sum_j x[t - j] @ kernel[j * s + r]. That is a
    # causal conv over *frames* with m = ceil(kernel_size / s) taps and s * features output
    # channels, reshaped to [frames * s, features]: the zero-stuffed input a dilated
    # transposed conv would multiply (s times the work) is never built.
    taps = -(-self.kernel_size // stride)
    kernel = jnp.pad(kernel, ((0, taps * stride - self.kernel_size), (0, 0), (0, 0)))
    kernel = kernel.reshape(taps, stride, x.shape[-1], self.features)
    kernel = jnp.transpose(kernel[::-1], (0, 2, 1, 3)).reshape(
        taps, x.shape[-1], stride * self.features)  # tap order: oldest frame first
    x = x.astype(self.dtype)
    context = taps - 1
    if streaming and context:
      buffer = self.variable("stream", "buffer", jnp.zeros,
                             (x.shape[0], context, x.shape[-1]), self.dtype)
      x = jnp.concatenate([buffer.value.astype(self.dtype), x], axis=1)
      buffer.value = x[:, x.shape[1] - context:]
    else:
      x = jnp.pad(x, ((0, 0), (context, 0), (0, 0)))
    y = jax.lax.conv_general_dilated(x, kernel.astype(self.dtype), window_strides=(1,),
                                     padding="VALID", dimension_numbers=_DIMENSION_NUMBERS)
    y = y.reshape(y.shape[0], y.shape[1] * stride, self.features)
    if self.use_bias:
      y = y + _bias(self, self.features).astype(self.dtype)
    return y
