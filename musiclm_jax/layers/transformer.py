"""Pre-norm transformer layer (T5.1.1 style): RMSNorm, attention, gated-GELU MLP."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from musiclm_jax.layers import attention, linear

ACTIVATION_AXES = ("batch", "length", "embed")


class GatedMlp(nn.Module):
  """x -> wo(gelu(wi_0 x) * wi_1 x): [batch, length, embed] -> same."""
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    # Outputs named for the remat policies that keep or drop them (decoder_lm).
    gate = checkpoint_name(linear.DenseGeneral(self.mlp_dim, ("embed", "mlp"),
                                               dtype=self.dtype, name="wi_0")(x), "mlpwi")
    up = checkpoint_name(linear.DenseGeneral(self.mlp_dim, ("embed", "mlp"),
                                             dtype=self.dtype, name="wi_1")(x), "mlpwi")
    h = nn.with_logical_constraint(nn.gelu(gate) * up, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return checkpoint_name(linear.DenseGeneral(x.shape[-1], ("mlp", "embed"),
                                               dtype=self.dtype, name="wo")(h), "mlpwo")


class TransformerLayer(nn.Module):
  """One residual block pair. Call signature fits `nn.scan`: (x, *broadcast) -> (x, None).

  Attributes beyond the sizes are static switches (set per call site, so scanned and
  rematerialised stacks see plain Python values).
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  causal: bool = True
  use_rotary: bool = False
  deterministic: bool = True
  decode: bool = False
  cache_length: Optional[int] = None
  num_kv_heads: Optional[int] = None
  attention_dropout_rate: Optional[float] = None   # None: dropout_rate
  attention_implementation: str = "einsum"         # see attention.MultiHeadAttention

  @nn.compact
  def __call__(self, x, positions, bias, cache_start):
    """x [batch, length, embed]; positions [length]; bias [1, heads, length, keys] | None."""
    h = linear.RMSNorm(dtype=self.dtype, name="pre_attention_norm")(x)
    attention_dropout = (self.dropout_rate if self.attention_dropout_rate is None
                         else self.attention_dropout_rate)
    h = attention.MultiHeadAttention(
        self.num_heads, self.head_dim, dtype=self.dtype, dropout_rate=attention_dropout,
        causal=self.causal, use_rotary=self.use_rotary, cache_length=self.cache_length,
        num_kv_heads=self.num_kv_heads, implementation=self.attention_implementation,
        name="self_attention")(h, positions, bias, cache_start, self.deterministic,
                               self.decode)
    x = x + nn.Dropout(self.dropout_rate)(h, deterministic=self.deterministic)
    h = linear.RMSNorm(dtype=self.dtype, name="pre_mlp_norm")(x)
    h = GatedMlp(self.mlp_dim, dtype=self.dtype, dropout_rate=self.dropout_rate,
                 name="mlp")(h, self.deterministic)
    x = x + nn.Dropout(self.dropout_rate)(h, deterministic=self.deterministic)
    return nn.with_logical_constraint(x, ACTIVATION_AXES), None
