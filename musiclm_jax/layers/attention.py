"""Multi-head dot-product attention with an optional key/value cache for decoding.

Decoding writes keys and values of each new *chunk* of tokens (a whole prompt at once, then
one token per step) into the 'cache' collection at `cache_start`; queries attend to every
cached position at or before their own. The same code path serves training (no cache,
causal or bidirectional mask) and generation, so cached decoding equals full recomputation.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from musiclm_jax.layers import linear, rotary, sharding

NEG_INF = -1e10
# 'pallas': the TPU flash-attention kernel (jax.experimental.pallas.ops.tpu); on other
# platforms Pallas interprets it (tests only) as plain JAX ops, block by block.
IMPLEMENTATIONS = ("einsum", "xla", "cudnn", "pallas")
PALLAS_BLOCK = 128  # the kernel's tile along the sequence; lengths are padded to it


class MultiHeadAttention(nn.Module):
  """Self-attention.

  Attributes:
    num_heads, head_dim: query shape per token is [num_heads, head_dim].
    num_kv_heads: key/value heads (None = num_heads). Fewer key/value heads (grouped-query
      attention; 1 = multi-query) shrink the cache and the bytes read per decoding step;
      each group of num_heads / num_kv_heads query heads shares one key/value head.
    dtype: computation dtype (softmax always float32).
    dropout_rate: dropout on the attention probabilities.
    causal: mask keys after the query (decoder) or not (encoder).
    use_rotary: rotate q and k by position (RoPE); otherwise positions come from `bias`.
    cache_length: size of the key/value cache (decode mode only).
    use_bias: biases on the query/key/value/output projections (BERT has them; T5 not).
    implementation: 'einsum' (written out here: float32 scores, any dropout) or one of
      `jax.nn.dot_product_attention`'s, 'xla' or 'cudnn' (fused flash attention on NVIDIA
      GPUs, bfloat16/float16 only: the [batch, heads, length, keys] scores never reach
      memory), or 'pallas', the Pallas flash-attention kernel for TPUs (bias included;
      its gradient too). The library calls have no dropout on the probabilities, so they
      need dropout_rate 0 in training; decoding (the cache) always takes the einsum path.
  """
  num_heads: int
  head_dim: int
  dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  causal: bool = True
  use_rotary: bool = False
  cache_length: Optional[int] = None
  num_kv_heads: Optional[int] = None
  use_bias: bool = False
  implementation: str = "einsum"

  @property
  def kv_heads(self) -> int:
    kv = self.num_kv_heads or self.num_heads
    if self.num_heads % kv:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={kv}")
    return kv

  @nn.compact
  def __call__(self, x: jnp.ndarray, positions: jnp.ndarray, bias: Optional[jnp.ndarray],
               cache_start: Optional[jnp.ndarray], deterministic: bool = True,
               decode: bool = False) -> jnp.ndarray:
    """Args:
      x: [batch, length, embed].
      positions: [length] absolute positions of x's tokens.
      bias: additive logit bias broadcastable to [batch, heads, length, keys] or None.
      cache_start: scalar int, where this chunk goes in the cache (decode mode).
    Returns:
      [batch, length, embed].
    """
    kv_heads = self.kv_heads
    groups = self.num_heads // kv_heads
    # Key/value heads shard over 'model' like query heads, unless they are fewer (GQA/MQA).
    kv_name = "heads" if kv_heads == self.num_heads else "kv_heads"
    project = lambda name, heads, axis: linear.DenseGeneral(
        (heads, self.head_dim), ("embed", axis, "kv"), dtype=self.dtype,
        use_bias=self.use_bias, name=name)
    qkv_axes = ("batch", "length", "heads", "kv")
    kv_axes = ("batch", "length", kv_name, "kv")
    # Named for the remat policies that keep the projections (decoder_lm.REMAT_POLICIES).
    q = checkpoint_name(nn.with_logical_constraint(
        project("query", self.num_heads, "heads")(x), qkv_axes), "query_proj")
    k = checkpoint_name(nn.with_logical_constraint(
        project("key", kv_heads, kv_name)(x), kv_axes), "key_proj")
    v = checkpoint_name(nn.with_logical_constraint(
        project("value", kv_heads, kv_name)(x), kv_axes), "value_proj")
    if self.use_rotary:
      q = rotary.apply_rotary(q, positions)
      k = rotary.apply_rotary(k, positions)

    if self.implementation != "einsum" and not decode:
      return self._out(self._library_attention(q, k, v, bias, deterministic), x.shape[-1])
    q = q * jnp.asarray(1.0 / np.sqrt(self.head_dim), q.dtype)
    # Query heads as [kv_heads, groups]: head h = kv_head * groups + group.
    q = q.reshape(q.shape[:2] + (kv_heads, groups, self.head_dim))
    if decode:
      k, v = self._update_cache(k, v, cache_start, kv_name)
      # Cache layout [batch, kv_heads, head_dim, cache_length]: the layout the dots
      # consume, so XLA updates it in place instead of re-laying it out every step.
      logits_eq, values_eq = "bqhgd,bhdk->bhgqk", "bhgqk,bhdk->bqhgd"
      # Unwritten cache slots lie after every query, so the causal mask hides them.
      key_positions = jnp.arange(self.cache_length)
    else:
      logits_eq, values_eq = "bqhgd,bkhd->bhgqk", "bhgqk,bkhd->bqhgd"
      key_positions = positions

    logits = jnp.einsum(logits_eq, q, k, preferred_element_type=jnp.float32)
    if bias is not None:
      bias = bias.astype(jnp.float32)
      logits = logits + bias.reshape(bias.shape[:1] + (kv_heads, groups) + bias.shape[2:])
    if self.causal:
      visible = key_positions[None, :] <= positions[:, None]
      logits = jnp.where(visible, logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1)
    if not deterministic and self.dropout_rate > 0:
      probs = nn.Dropout(self.dropout_rate)(probs, deterministic=False)
    out = jnp.einsum(values_eq, probs.astype(self.dtype), v)
    out = out.reshape(out.shape[:2] + (self.num_heads, self.head_dim))
    return self._out(nn.with_logical_constraint(out, qkv_axes), x.shape[-1])

  def _out(self, heads: jnp.ndarray, features: int) -> jnp.ndarray:
    """The output projection: [batch, length, heads, head_dim] -> [batch, length, features]."""
    out = linear.DenseGeneral(features, ("heads", "kv", "embed"), contract_dims=2,
                              dtype=self.dtype, use_bias=self.use_bias, name="out")(heads)
    return checkpoint_name(out, "out_proj")

  def _library_attention(self, q, k, v, bias, deterministic: bool) -> jnp.ndarray:
    """q [batch, length, heads, head_dim], k, v [batch, length, kv_heads, head_dim] ->
    [batch, length, heads, head_dim] through `jax.nn.dot_product_attention`."""
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(f"implementation={self.implementation!r}; expected one of "
                       f"{IMPLEMENTATIONS}")
    if not deterministic and self.dropout_rate > 0:
      raise ValueError(f"implementation={self.implementation!r} has no dropout on the "
                       f"attention probabilities; dropout_rate is {self.dropout_rate}")
    if bias is not None:  # [1 or batch, heads, length, keys], in the inputs' dtype (cuDNN)
      bias = jnp.broadcast_to(bias, bias.shape[:1] + (self.num_heads,) + bias.shape[2:])
      bias = bias.astype(q.dtype)
    if self.implementation == "pallas":
      out = self._pallas_attention(q, k, v, bias)
    else:
      out = jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=self.causal,
                                         implementation=self.implementation)
    return nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))

  def _pallas_attention(self, q, k, v, bias) -> jnp.ndarray:
    """The TPU flash-attention kernel: q [batch, length, heads, head_dim], k, v [batch,
    length, kv_heads, head_dim], bias [1 or batch, heads, length, length] -> like q.

    The kernel computes (q k + bias) * sm_scale, so q is scaled first and sm_scale is 1.
    Lengths are padded to PALLAS_BLOCK: padded keys lie after every query (hidden by the
    causal mask) or in another segment (bidirectional). The bias goes in per example
    ([batch, heads, L, L] in the compute dtype; the kernel indexes it by example).
    """
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash  # pylint: disable=g-import-not-at-top
    batch, length = q.shape[:2]
    groups = self.num_heads // k.shape[2]
    k, v = (jnp.repeat(x, groups, axis=2) if groups > 1 else x for x in (k, v))
    padded = -(-length // PALLAS_BLOCK) * PALLAS_BLOCK
    pad = padded - length
    heads_first = lambda x: jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, pad), (0, 0)))
    q = heads_first(q * jnp.asarray(1.0 / np.sqrt(self.head_dim), q.dtype))
    k, v = heads_first(k), heads_first(v)
    if bias is not None:
      bias = jnp.broadcast_to(bias, (batch,) + bias.shape[1:])
      bias = jnp.pad(bias, ((0, 0), (0, 0), (0, pad), (0, pad)))
    segments = None
    if pad and not self.causal:
      ids = jnp.broadcast_to((jnp.arange(padded) < length).astype(jnp.int32), (batch, padded))
      segments = tpu_flash.SegmentIds(q=ids, kv=ids)
    sizes = pallas_block_sizes(min(PALLAS_BLOCK, padded))
    if jax.default_backend() != "tpu":
      # Pallas TPU kernels run nowhere else but interpreted; set globally, as the kernel's
      # backward pass is traced after this call returns. True selects Pallas's HLO
      # interpreter (the grid as a loop of plain JAX ops), not the TPU simulator
      # (InterpretParams), whose host callbacks deadlocked on a 2-core CPU and hung on 8
      # simulated devices.
      from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
      pltpu.set_tpu_interpret_mode(True)
    kernel = lambda q, k, v, bias, segments: tpu_flash.flash_attention(
        q, k, v, bias, segments, causal=self.causal, sm_scale=1.0, block_sizes=sizes)
    out = _per_shard(kernel, q, k, v, bias, segments)
    return jnp.swapaxes(out[:, :, :length], 1, 2)

  def _update_cache(self, k: jnp.ndarray, v: jnp.ndarray, cache_start: jnp.ndarray,
                    kv_name: str):
    """Writes a chunk k, v [batch, length, kv_heads, head_dim] at `cache_start`.

    Returns the whole cached keys and values, [batch, kv_heads, head_dim, cache_length].
    """
    if self.cache_length is None:
      raise ValueError("decode=True needs cache_length")
    shape = (k.shape[0], k.shape[2], self.head_dim, self.cache_length)
    cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, self.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, self.dtype)
    cache_axes = ("batch", kv_name, "kv", "cache_length")
    index = (0, 0, 0, cache_start)
    to_cache_layout = lambda x: jnp.transpose(x, (0, 2, 3, 1)).astype(self.dtype)
    k = jax.lax.dynamic_update_slice(cached_key.value, to_cache_layout(k), index)
    v = jax.lax.dynamic_update_slice(cached_value.value, to_cache_layout(v), index)
    cached_key.value = nn.with_logical_constraint(k, cache_axes)
    cached_value.value = nn.with_logical_constraint(v, cache_axes)
    return cached_key.value, cached_value.value


def pallas_block_sizes(block: int):
  """The TPU flash-attention kernel's tiles: `block` along the sequence for every pass
  (forward, dK/dV, dQ), one example at a time."""
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash  # pylint: disable=g-import-not-at-top
  return tpu_flash.BlockSizes(
      block_q=block, block_k_major=block, block_k=block, block_b=1,
      block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block,
      block_q_dkv=block, block_k_major_dq=block, block_k_dq=block, block_q_dq=block)


def _per_shard(kernel, q, k, v, bias, segments):
  """kernel(q, k, v, bias, segments) on each device's examples and heads (shard_map over the
  mesh in context, batch and heads split as the logical rules split them): XLA cannot
  partition a Mosaic kernel itself. q, k, v [batch, heads, length, head_dim], bias [batch,
  heads, length, length] or None, segments (ids [batch, length]) or None -> like q."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(q, k, v, bias, segments)
  spec = sharding.fit_spec(nn.logical_to_mesh_axes(("batch", "heads", None, None)), q.shape,
                           dict(mesh.shape))
  rows = jax.sharding.PartitionSpec(spec[0], None)
  segment_spec = None if segments is None else type(segments)(q=rows, kv=rows)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec, None if bias is None
                                                    else spec, segment_spec),
                       out_specs=spec, check_vma=False)(q, k, v, bias, segments)
