"""MuLan's audio towers over log-mel spectrograms: an Audio Spectrogram Transformer and a
ResNet-50. Both map mel [B, frames, mels] -> pooled features [B, width]; the MuLan module
projects them to the joint space.

AST (Gong et al. 2021): the spectrogram cut into (time x frequency) patches by a strided
convolution, learned time and frequency position embeddings (factored, so clips shorter
than the training window also embed), pre-norm bidirectional Transformer layers
(`layers.transformer.TransformerLayer`, shared with the LMs), mean-pooled.

ResNet-50 (He et al. 2016), the MuLan paper's main audio tower, with GroupNorm in place of
BatchNorm: batch statistics would need a mutable collection synchronised over devices and
would make a clip's embedding depend on the rest of its batch, which a tokenizer must not.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from musiclm_jax.layers import linear, transformer


def _conv(features: int, kernel: Tuple[int, int], strides: Tuple[int, int], dtype,
          name: str, padding="SAME") -> nn.Conv:
  """2-D convolution with float32 params and logical axes (height, width, conv_in, conv_out)."""
  return nn.Conv(features, kernel, strides=strides, padding=padding, use_bias=False,
                 dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=nn.with_logical_partitioning(
                     nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
                     (None, None, "conv_in", "conv_out")),
                 name=name)


class AudioSpectrogramTransformer(nn.Module):
  """mel [B, frames, mels] -> [B, emb_dim].

  Attributes:
    patch_size, patch_stride: (time, frequency) patch shape and hop (stride < size overlaps).
    max_frames: the longest input (sets the time position table).
    emb_dim, num_heads, head_dim, mlp_dim, num_layers: Transformer sizes.
  """
  patch_size: Tuple[int, int]
  patch_stride: Tuple[int, int]
  max_frames: int
  emb_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_layers: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  def num_patches(self, frames: int, mels: int) -> Tuple[int, int]:
    count = lambda n, i: (n - self.patch_size[i]) // self.patch_stride[i] + 1
    return count(frames, 0), count(mels, 1)

  @nn.compact
  def __call__(self, mel: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    batch, frames, mels = mel.shape
    if frames > self.max_frames:
      raise ValueError(f"{frames} mel frames exceed the tower's max_frames={self.max_frames}")
    if frames < self.patch_size[0] or mels < self.patch_size[1]:
      raise ValueError(f"mel {frames}x{mels} is smaller than one patch {self.patch_size}")
    x = _conv(self.emb_dim, self.patch_size, self.patch_stride, self.dtype, "patch_embedding",
              padding="VALID")(mel[..., None].astype(self.dtype))  # [B, nt, nf, emb]
    max_time, freq = self.num_patches(self.max_frames, mels)
    table = lambda name, rows: self.param(
        name, nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
        (rows, self.emb_dim), jnp.float32)
    time_pos, freq_pos = table("time_position", max_time), table("freq_position", freq)
    x = x + (time_pos[:x.shape[1], None, :] + freq_pos[None, :, :]).astype(x.dtype)
    x = x.reshape(batch, -1, self.emb_dim)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    positions = jnp.arange(x.shape[1])
    for i in range(self.num_layers):
      x, _ = transformer.TransformerLayer(
          self.num_heads, self.head_dim, self.mlp_dim, dtype=self.dtype,
          dropout_rate=self.dropout_rate, causal=False, deterministic=deterministic,
          name=f"layer_{i}")(x, positions, None, None)
    x = linear.RMSNorm(dtype=self.dtype, name="final_norm")(x)
    return jnp.mean(x.astype(jnp.float32), axis=1)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (x4 channels), GroupNorm + ReLU, projected shortcut."""
  width: int
  strides: Tuple[int, int]
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    norm = lambda name, h: nn.GroupNorm(
        min(self.groups, h.shape[-1]), dtype=self.dtype, param_dtype=jnp.float32,
        name=name)(h)
    out_width = 4 * self.width
    h = nn.relu(norm("norm1", _conv(self.width, (1, 1), (1, 1), self.dtype, "conv1")(x)))
    h = nn.relu(norm("norm2", _conv(self.width, (3, 3), self.strides, self.dtype, "conv2")(h)))
    h = norm("norm3", _conv(out_width, (1, 1), (1, 1), self.dtype, "conv3")(h))
    if x.shape[-1] != out_width or self.strides != (1, 1):
      x = norm("shortcut_norm",
               _conv(out_width, (1, 1), self.strides, self.dtype, "shortcut")(x))
    return nn.relu(x + h)


class ResNet(nn.Module):
  """mel [B, frames, mels] -> [B, 4 * widths[-1]]: a bottleneck ResNet on the spectrogram
  as a one-channel image. ResNet-50: widths (64, 128, 256, 512), blocks (3, 4, 6, 3)."""
  widths: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (3, 4, 6, 3)
  stem_width: int = 64
  groups: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, mel: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    del deterministic  # no dropout
    x = _conv(self.stem_width, (7, 7), (2, 2), self.dtype, "stem")(mel[..., None])
    x = nn.relu(nn.GroupNorm(min(self.groups, self.stem_width), dtype=self.dtype,
                             param_dtype=jnp.float32, name="stem_norm")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for stage, (width, count) in enumerate(zip(self.widths, self.blocks)):
      for block in range(count):
        strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
        x = BottleneckBlock(width, strides, self.groups, dtype=self.dtype,
                            name=f"stage{stage}_block{block}")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
