"""SEANet encoder and decoder: SoundStream's fully convolutional, causal codec backbone.

Encoder: a k=7 conv to C channels, then one block per stride s: three residual units
(dilations 1, 3, 9: ELU, dilated k=7 conv, ELU, k=1 conv, skip add) and ELU + a strided
conv (k=2s) that doubles the channels; then ELU + a k=3 conv to the embedding size. With
strides (3, 4, 5, 8) a 24 kHz clip becomes 50 frames a second (hop 480, MusicLM's rate).
The decoder mirrors it: a k=7 conv from the embedding to C * 2^len(strides) channels, one
block per stride in reverse (ELU + a k=2s transposed conv halving the channels, then the
three residual units), and ELU + a k=7 conv to one channel.

Decisions:
- Every conv is causal (`musiclm_jax.layers.conv`): encoder frame j depends on samples
  < (j + 1) * hop only, decoder sample t on frames <= t // hop only, and both can stream
  chunk by chunk (`streaming=True`) with outputs equal to the whole-clip outputs.
- Weight normalisation on every conv (as SoundStream and EnCodec do), switchable.
- No tanh on the decoder output (EnCodec's choice too): tanh squashes loud passages and its
  vanishing gradient near +-1 slows learning them; the spectral and adversarial losses keep
  the output in range, and writers clip to [-1, 1].
- No LSTM (EnCodec adds one; SoundStream has none).
- Encoder and decoder outputs are float32 whatever the compute dtype: embeddings go to the
  quantizer's distance computations, audio to the losses.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from musiclm_jax.layers.conv import CausalConv1D, CausalConvTranspose1D


class ResidualUnit(nn.Module):
  """x + conv1(ELU(dilated conv7(ELU(x)))): [batch, time, channels] -> same shape."""
  dilation: int
  kernel_size: int = 7
  weight_norm: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, streaming: bool = False) -> jnp.ndarray:
    channels = x.shape[-1]
    h = CausalConv1D(channels, self.kernel_size, dilation=self.dilation, dtype=self.dtype,
                     weight_norm=self.weight_norm, name="dilated")(nn.elu(x), streaming)
    h = CausalConv1D(channels, 1, dtype=self.dtype, weight_norm=self.weight_norm,
                     name="pointwise")(nn.elu(h), streaming)
    return x.astype(self.dtype) + h


class SEANetEncoder(nn.Module):
  """Waveform -> embeddings at 1 / prod(strides) of the sample rate.

  Attributes:
    channels: C, the width of the first conv; block i outputs C * 2^(i+1) channels.
    strides: downsampling factor per block; hop_length = prod(strides).
    embedding_dim: D, the size of each output frame.
    dilations: dilations of the residual units in each block.
    residual_kernel_size: taps of the residual units' dilated convs.
    weight_norm: weight-normalise every conv.
    dtype: computation dtype (parameters stay float32).
  """
  channels: int = 32
  strides: Sequence[int] = (3, 4, 5, 8)
  embedding_dim: int = 128
  dilations: Sequence[int] = (1, 3, 9)
  residual_kernel_size: int = 7
  weight_norm: bool = True
  dtype: jnp.dtype = jnp.float32

  @property
  def hop_length(self) -> int:
    return math.prod(self.strides)

  @nn.compact
  def __call__(self, wave: jnp.ndarray, streaming: bool = False) -> jnp.ndarray:
    """Args:
      wave: [batch, samples] or [batch, samples, 1]; samples a multiple of hop_length
        (in streaming mode: each chunk's).
      streaming: keep the convs' left context in the 'stream' collection between calls.
    Returns:
      [batch, samples // hop_length, embedding_dim], float32.
    """
    if wave.ndim == 2:
      wave = wave[..., None]
    if wave.ndim != 3 or wave.shape[-1] != 1:
      raise ValueError(f"SEANetEncoder wants [batch, samples] or [batch, samples, 1] audio, "
                       f"got shape {wave.shape}")
    if wave.shape[1] == 0 or wave.shape[1] % self.hop_length:
      raise ValueError(f"SEANetEncoder: {wave.shape[1]} samples is not a (positive) multiple "
                       f"of the hop length {self.hop_length} = prod{tuple(self.strides)}")
    conv = lambda features, kernel_size, name, stride=1: CausalConv1D(
        features, kernel_size, stride=stride, dtype=self.dtype, weight_norm=self.weight_norm,
        name=name)

    h = conv(self.channels, 7, "stem")(wave, streaming)
    for i, stride in enumerate(self.strides):
      width = self.channels * 2 ** i
      for j, dilation in enumerate(self.dilations):
        h = ResidualUnit(dilation, self.residual_kernel_size, self.weight_norm, self.dtype,
                         name=f"block_{i}_res_{j}")(h, streaming)
      h = conv(2 * width, 2 * stride, f"block_{i}_down", stride)(nn.elu(h), streaming)
    h = conv(self.embedding_dim, 3, "project")(nn.elu(h), streaming)
    return nn.with_logical_constraint(h.astype(jnp.float32), ("batch", "length", "embed"))


class SEANetDecoder(nn.Module):
  """Embeddings -> waveform, prod(strides) samples per frame (attributes as the encoder's)."""
  channels: int = 32
  strides: Sequence[int] = (3, 4, 5, 8)
  dilations: Sequence[int] = (1, 3, 9)
  residual_kernel_size: int = 7
  weight_norm: bool = True
  dtype: jnp.dtype = jnp.float32

  @property
  def hop_length(self) -> int:
    return math.prod(self.strides)

  @nn.compact
  def __call__(self, embeddings: jnp.ndarray, streaming: bool = False) -> jnp.ndarray:
    """Args:
      embeddings: [batch, frames, embedding_dim].
      streaming: keep the convs' context / overhang in the 'stream' collection.
    Returns:
      [batch, frames * hop_length], float32 (not squashed to [-1, 1]).
    """
    if embeddings.ndim != 3:
      raise ValueError(f"SEANetDecoder wants [batch, frames, embedding_dim], got shape "
                       f"{embeddings.shape}")
    conv = lambda features, kernel_size, name: CausalConv1D(
        features, kernel_size, dtype=self.dtype, weight_norm=self.weight_norm, name=name)

    h = conv(self.channels * 2 ** len(self.strides), 7, "stem")(embeddings, streaming)
    for i, stride in enumerate(reversed(self.strides)):
      width = self.channels * 2 ** (len(self.strides) - i - 1)
      h = CausalConvTranspose1D(width, 2 * stride, stride, dtype=self.dtype,
                                weight_norm=self.weight_norm,
                                name=f"block_{i}_up")(nn.elu(h), streaming)
      for j, dilation in enumerate(self.dilations):
        h = ResidualUnit(dilation, self.residual_kernel_size, self.weight_norm, self.dtype,
                         name=f"block_{i}_res_{j}")(h, streaming)
    wave = conv(1, 7, "project")(nn.elu(h), streaming)
    return wave[..., 0].astype(jnp.float32)
