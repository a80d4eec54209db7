"""Conformer blocks (Gulati et al. 2020): the encoder layers of w2v-BERT.

A block is a "macaron": two half-step feed-forward modules around self-attention and a
convolution module, each a pre-normed residual branch, then a final norm:

  x = x + 1/2 FFN(x)
  x = x + MHSA(x)       bidirectional; positions from a relative bias shared by the stack
  x = x + Conv(x)       pointwise conv + GLU -> depthwise conv over time -> norm -> swish
                        -> pointwise conv
  x = x + 1/2 FFN(x)
  x = LayerNorm(x)

Attention reuses `layers.attention.MultiHeadAttention` with causal=False; positions come from
one T5 relative bias computed by the caller (`RelativePositionBiases(bidirectional=True)`) and
shared by every block, or from rotary embeddings. The depthwise convolution is centred
("same" padding): an encoder sees the whole clip, so nothing needs to be causal.

Two deliberate departures from the paper's block:
  - residual branches are pre-normed with RMSNorm (as every other layer of this project);
  - the convolution module's BatchNorm is a layer norm over channels. Batch statistics
    would need a mutable collection and cross-device reductions, and, worse for a
    tokenizer, would make a clip's embedding depend on the other clips of its batch.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from musiclm_jax.layers import attention, linear

ACTIVATION_AXES = ("batch", "length", "embed")
HIDDEN_AXES = ("batch", "length", "mlp")


class FeedForward(nn.Module):
  """Pre-normed x -> W2 dropout(swish(W1 x)): [batch, length, embed] -> same."""
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    h = linear.RMSNorm(dtype=self.dtype, name="norm")(x)
    h = linear.DenseGeneral(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="wi")(h)
    h = nn.with_logical_constraint(nn.swish(h), HIDDEN_AXES)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return linear.DenseGeneral(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="wo")(h)


def depthwise_conv1d(x: jnp.ndarray, kernel: jnp.ndarray, left: int) -> jnp.ndarray:
  """Per-channel convolution over time, zero-padded to keep the length.

  x [batch, length, channels], kernel [taps, channels] -> [batch, length, channels]:
  out[:, t] = sum_k kernel[k] * x[:, t + k - left] (zero outside the clip), i.e. `left`
  frames of left context and taps - 1 - left of right context.

  Written as a sum of shifted products rather than a `feature_group_count` convolution:
  XLA fuses it into one elementwise loop, where XLA:CPU runs grouped convolutions on a slow
  generic path. Forward + backward, batch 16 x 250 frames, on a 2-core Xeon
  (benchmarks/conv_speed.py): w2v-BERT `small` (384 channels, 15 taps) 164 ms grouped,
  49 ms this way; `paper` (1024 channels, 5 taps) 447 ms vs 44 ms.
  """
  taps, length = kernel.shape[0], x.shape[1]
  padded = jnp.pad(x, ((0, 0), (left, taps - 1 - left), (0, 0)))
  return sum(padded[:, k:k + length] * kernel[k] for k in range(taps))


class ConvolutionModule(nn.Module):
  """Pre-normed pointwise conv + GLU, depthwise conv over time, norm, swish, pointwise conv.

  [batch, length, embed] -> same. The inner channels (as many as `embed`) carry the logical
  name 'mlp', so tensor parallelism shards them like a feed-forward's hidden units.

  Attributes:
    kernel_size: taps of the depthwise convolution (centred: kernel_size // 2 frames of
      left context, (kernel_size - 1) // 2 of right context).
    dtype: computation dtype.
  """
  kernel_size: int = 31
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    h = linear.RMSNorm(dtype=self.dtype, name="norm")(x)
    # One kernel computes the GLU's value and gate: [embed, 2, mlp].
    h = linear.DenseGeneral((2, channels), ("embed", None, "mlp"), dtype=self.dtype,
                            name="pointwise_in")(h)
    h = h[..., 0, :] * nn.sigmoid(h[..., 1, :])
    h = nn.with_logical_constraint(h, HIDDEN_AXES)
    kernel = self.param("depthwise_kernel", nn.with_logical_partitioning(
        linear.fan_in_normal(self.kernel_size), (None, None, "mlp")),
                        (self.kernel_size, 1, channels), jnp.float32)
    h = depthwise_conv1d(h, kernel[:, 0].astype(self.dtype), self.kernel_size // 2)
    h = linear.LayerNorm("mlp", dtype=self.dtype, name="depthwise_norm")(h)
    h = nn.with_logical_constraint(nn.swish(h), HIDDEN_AXES)
    return linear.DenseGeneral(channels, ("mlp", "embed"), dtype=self.dtype,
                               name="pointwise_out")(h)


class ConformerBlock(nn.Module):
  """One conformer block (module docstring): [batch, length, embed] -> same.

  Attributes:
    num_heads, head_dim: attention shape.
    mlp_dim: hidden width of each feed-forward module.
    conv_kernel_size: depthwise convolution taps.
    dtype: computation dtype (parameters float32).
    dropout_rate: on every residual branch, the feed-forward hidden units and attention
      probabilities.
    use_rotary: rotary positions in attention (otherwise from the `bias` argument).
    deterministic: disables dropout (an attribute, so remat sees a Python value).
    layer_scale_init: None, or LayerScale (Touvron et al. 2021, CaiT): each residual
      branch's output is multiplied by a learned per-channel scale starting at this value.
      The block ends in a layer norm, so with unit-scale branches the input's share of the
      block's output falls about 5x per block, and a random-initialised stack keeps little
      of its input (a ridge regression from w2v-BERT `small`'s last layer reads the input's
      semitone spectrum worse than a constant); with scales of 0.1 a block starts close to
      the identity and training decides what the branches add.
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  conv_kernel_size: int = 31
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  use_rotary: bool = False
  deterministic: bool = True
  layer_scale_init: Optional[float] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, positions: jnp.ndarray,
               bias: Optional[jnp.ndarray]) -> jnp.ndarray:
    """x [batch, length, embed]; positions [length]; bias [1, heads, length, length] | None."""
    det = self.deterministic
    drop = lambda h: nn.Dropout(self.dropout_rate)(h, deterministic=det)
    ffn = lambda name: FeedForward(self.mlp_dim, dtype=self.dtype,
                                   dropout_rate=self.dropout_rate, name=name)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    def scaled(h, name):
      if self.layer_scale_init is None:
        return h
      scale = self.param(f"{name}_layer_scale", nn.with_logical_partitioning(
          nn.initializers.constant(self.layer_scale_init), ("embed",)), (x.shape[-1],),
                         jnp.float32)
      return h * scale.astype(h.dtype)
    x = x + 0.5 * drop(scaled(ffn("ffn_in")(x, det), "ffn_in"))
    h = linear.RMSNorm(dtype=self.dtype, name="pre_attention_norm")(x)
    h = attention.MultiHeadAttention(
        self.num_heads, self.head_dim, dtype=self.dtype, dropout_rate=self.dropout_rate,
        causal=False, use_rotary=self.use_rotary, name="self_attention")(
            h, positions, bias, None, det)
    x = x + drop(scaled(h, "attention"))
    x = x + drop(scaled(ConvolutionModule(self.conv_kernel_size, dtype=self.dtype,
                                          name="conv")(x), "conv"))
    x = x + 0.5 * drop(scaled(ffn("ffn_out")(x, det), "ffn_out"))
    x = linear.LayerNorm("embed", dtype=self.dtype, name="final_norm")(x)
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


class ConformerStack(nn.Module):
  """`num_layers` conformer blocks named layers_0, layers_1, ...

  Attributes:
    num_layers: blocks in the stack.
    remat: recompute each block's activations in the backward pass (saves memory on the
      deep `paper` model).
    (the rest: see `ConformerBlock`).
  """
  num_layers: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  conv_kernel_size: int = 31
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  use_rotary: bool = False
  remat: bool = False
  layer_scale_init: Optional[float] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, positions: jnp.ndarray, bias: Optional[jnp.ndarray],
               deterministic: bool = True, num_layers: Optional[int] = None) -> jnp.ndarray:
    """Runs the first `num_layers` blocks (default all): [batch, length, embed] -> same.

    Stopping early serves embedding extraction from an intermediate layer; the unused
    blocks' parameters are simply not read.
    """
    count = self.num_layers if num_layers is None else num_layers
    if not 0 <= count <= self.num_layers:
      raise ValueError(f"{self.name}: asked for {count} of {self.num_layers} layers")
    block_cls = nn.remat(ConformerBlock) if self.remat else ConformerBlock
    for i in range(count):
      x = block_cls(self.num_heads, self.head_dim, self.mlp_dim, self.conv_kernel_size,
                    dtype=self.dtype, dropout_rate=self.dropout_rate,
                    use_rotary=self.use_rotary, deterministic=deterministic,
                    layer_scale_init=self.layer_scale_init, name=f"layers_{i}")(
                        x, positions, bias)
    return x
