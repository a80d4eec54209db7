"""Decoder-only transformer over [conditioning prefix ; target tokens] (one file per model).

Sequence layout (every MusicLM stage is this shape):

    position:  0 .. P-1          P        P+1 .. P+T-1
    token:     prefix_0..P-1    BOS      target_0 .. target_{T-2}
    predicts:  (no loss)        target_0 target_1 .. target_{T-1}

The prefix (e.g. MuLan tokens, or semantic tokens for the acoustic stages) has its own
embedding table whose last real row is NULL: replacing a prefix by NULL tokens gives the
unconditional model that classifier-free guidance needs. Attention is causal over the
whole sequence, so one key/value cache serves the prefix and the generated tokens.

Vocabularies are padded to a multiple of `vocab_multiple` (for even sharding over the
'model' axis); padded ids and BOS get logit -1e10 and are never predicted.

With `parallel_levels` K > 0 the targets are RVQ frames modelled with MusicGen's delay
pattern (lm/delay_pattern.py): a position is a step, its input the sum of the K tokens
emitted at the step before, its output one head per level.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from musiclm_jax.layers import attention, linear, relative_position, transformer
from musiclm_jax.lm import delay_pattern

POSITION_EMBEDDINGS = ("relative_bias", "rotary")
# 'save_*': MaxText's named policies; the names are set in layers/attention.py and
# layers/transformer.py. Measured per device in benchmarks/memory_layouts.py.
_SAVED_NAMES = {
    "save_qkv_proj": ("query_proj", "key_proj", "value_proj"),
    "save_dot_except_mlp": ("query_proj", "key_proj", "value_proj", "out_proj"),
}
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", *_SAVED_NAMES)


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Sizes and switches of a `DecoderOnlyLM`.

  Attributes:
    target_vocab_size: number of target token ids; BOS is id `target_vocab_size`.
    prefix_vocab_size: number of prefix ids; NULL (for guidance) is id `prefix_vocab_size`.
      0 = unconditional model (no prefix).
    num_layers, num_heads, head_dim, emb_dim, mlp_dim: transformer sizes.
    num_kv_heads: key/value heads; None = num_heads (multi-head), fewer = grouped-query
      attention (1 = multi-query): a smaller cache and faster decoding.
    dropout_rate: dropout on residual branches, MLP and attention probabilities.
    attention_dropout_rate: dropout on the attention probabilities alone (None: dropout_rate).
    attention_implementation: 'einsum' (float32 scores in memory), or 'xla' / 'cudnn'
      through `jax.nn.dot_product_attention` ('cudnn': fused flash attention on NVIDIA GPUs,
      bfloat16 only), or 'pallas' (the Pallas flash-attention kernel for TPUs); all but
      einsum need attention_dropout_rate 0.
    max_length: longest prefix + target sequence the model is meant for (decoding caches
      are sized per call; this bounds them and documents the model).
    dtype: computation dtype ('float32' or 'bfloat16'); parameters are always float32.
    position_embedding: 'relative_bias' (T5) or 'rotary'.
    relpos_num_buckets, relpos_max_distance: T5 relative bias buckets.
    scan_layers: stack the layers with `nn.scan` (fast compiles for deep models; parameter
      leaves gain a leading 'stack' axis).
    remat_policy: activation rematerialisation per layer: 'none', 'full', 'dots' (keep
      every matmul output, recompute the rest) or 'dots_no_batch' (keep the outputs of
      matmuls with weights, not attention's scores and values, which are batched matmuls of
      [batch, heads, length, length]: at length 2048 those dominate the saved memory; what
      MaxText calls 'minimal'), or MaxText's named ones: 'save_qkv_proj' (keep the query,
      key and value projections) and 'save_dot_except_mlp' (those and attention's output
      projection; the MLP is recomputed). (MaxText's 'save_dot_except_mlpwi' would equal
      the latter here: the MLP's output feeds only the residual sum, which the backward
      pass does not read.)
    vocab_multiple: embedding/logit tables are padded to a multiple of this.
    parallel_levels: 0 = one position per target token; K > 0 = the targets are frames of
      K RVQ levels (level k's ids are k * codes .. (k + 1) * codes - 1, codes =
      target_vocab_size / K) modelled with the delay pattern: one position per step and K
      output heads, so T frames take T + K - 1 positions instead of T * K.
  """
  target_vocab_size: int
  prefix_vocab_size: int = 0
  num_layers: int = 6
  num_heads: int = 8
  head_dim: int = 64
  emb_dim: int = 512
  mlp_dim: int = 2048
  num_kv_heads: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: Optional[float] = None
  attention_implementation: str = "einsum"
  max_length: int = 2048
  dtype: str = "float32"
  position_embedding: str = "relative_bias"
  relpos_num_buckets: int = 32
  relpos_max_distance: int = 128
  scan_layers: bool = False
  remat_policy: str = "none"
  vocab_multiple: int = 128
  parallel_levels: int = 0

  def __post_init__(self):
    if self.target_vocab_size < 1:
      raise ValueError(f"target_vocab_size must be >= 1, got {self.target_vocab_size}")
    if self.parallel_levels < 0 or (self.parallel_levels and
                                    self.target_vocab_size % self.parallel_levels):
      raise ValueError(f"parallel_levels={self.parallel_levels} must be 0 or divide "
                       f"target_vocab_size={self.target_vocab_size} (equal levels)")
    if self.num_kv_heads is not None and (self.num_kv_heads < 1 or
                                          self.num_heads % self.num_kv_heads):
      raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide "
                       f"num_heads={self.num_heads}")
    if self.position_embedding not in POSITION_EMBEDDINGS:
      raise ValueError(f"position_embedding={self.position_embedding!r}; expected one of "
                       f"{POSITION_EMBEDDINGS}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of "
                       f"{REMAT_POLICIES}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r}; expected 'float32' or 'bfloat16'")
    if self.attention_implementation not in attention.IMPLEMENTATIONS:
      raise ValueError(f"attention_implementation={self.attention_implementation!r}; "
                       f"expected one of {attention.IMPLEMENTATIONS}")
    if self.attention_implementation != "einsum" and self.attention_dropout > 0:
      raise ValueError(f"attention_implementation={self.attention_implementation!r} has no "
                       f"dropout on the attention probabilities: set attention_dropout_rate "
                       f"to 0 (it is {self.attention_dropout})")

  @property
  def attention_dropout(self) -> float:
    return (self.dropout_rate if self.attention_dropout_rate is None
            else self.attention_dropout_rate)

  @property
  def bos_id(self) -> int:
    return self.target_vocab_size

  @property
  def null_prefix_id(self) -> int:
    return self.prefix_vocab_size

  @property
  def padded_target_vocab(self) -> int:
    return round_up(self.target_vocab_size + 1, self.vocab_multiple)

  @property
  def padded_prefix_vocab(self) -> int:
    return round_up(self.prefix_vocab_size + 1, self.vocab_multiple)

  @property
  def level_codes(self) -> int:
    """Ids per RVQ level with parallel_levels, else 0."""
    return self.target_vocab_size // self.parallel_levels if self.parallel_levels else 0

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)


def _remat_policy(name: str):
  if name == "dots":
    return jax.checkpoint_policies.dots_saveable
  if name == "dots_no_batch":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  if name in _SAVED_NAMES:
    return jax.checkpoint_policies.save_only_these_names(*_SAVED_NAMES[name])
  return None  # 'full': save nothing, recompute the layer in the backward pass


class DecoderOnlyLM(nn.Module):
  """Prefix-conditioned causal transformer LM. See the module docstring for the layout."""
  config: DecoderConfig

  def _embed(self, name: str, num_rows: int, tokens: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    return nn.Embed(num_rows, cfg.emb_dim, dtype=cfg.jnp_dtype, param_dtype=jnp.float32,
                    embedding_init=nn.with_logical_partitioning(
                        nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
                    name=name)(tokens)

  @nn.compact
  def __call__(self, decoder_input_tokens: jnp.ndarray,
               prefix_tokens: Optional[jnp.ndarray] = None, *, deterministic: bool = True,
               decode: bool = False, cache_length: Optional[int] = None,
               return_hidden: bool = False) -> jnp.ndarray:
    """Next-token logits for the target positions.

    Args:
      decoder_input_tokens: [batch, T] int, BOS + targets shifted right (or, in decode
        mode, the next chunk of target-side tokens). With parallel_levels K: step tokens
        [batch, T, K] (`delay_pattern.step_inputs`; EMPTY adds nothing).
      prefix_tokens: [batch, P] int conditioning, or None (unconditional, or in decode mode
        any call after the first).
      deterministic: disables dropout.
      decode: use and extend the key/value cache ('cache' collection, pass it mutable).
      cache_length: cache size (positions) for decode mode; set on the first call.
      return_hidden: return the final hidden states [batch, T, emb_dim] instead (the
        chunked loss projects them to logits a chunk at a time).
    Returns:
      float32 logits [batch, T, padded_target_vocab] (ids >= target_vocab_size masked); with
      parallel_levels K, [batch, T, K, padded_target_vocab], head k masked to level k's ids.
    """
    cfg = self.config
    dtype = cfg.jnp_dtype
    if cfg.parallel_levels:
      present = decoder_input_tokens != delay_pattern.EMPTY
      x = self._embed("token_embedder", cfg.padded_target_vocab,
                      jnp.where(present, decoder_input_tokens, 0))
      x = jnp.sum(jnp.where(present[..., None], x, 0), axis=2).astype(dtype)
    else:
      x = self._embed("token_embedder", cfg.padded_target_vocab, decoder_input_tokens)
    num_targets = x.shape[1]
    if prefix_tokens is not None:
      if cfg.prefix_vocab_size == 0:
        raise ValueError("prefix_tokens given to a model with prefix_vocab_size=0")
      prefix = self._embed("prefix_embedder", cfg.padded_prefix_vocab, prefix_tokens)
      x = jnp.concatenate([prefix, x], axis=1)
    x = nn.with_logical_constraint(x, transformer.ACTIVATION_AXES)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    length = x.shape[1]

    if decode:
      if cache_length is None:
        raise ValueError("decode=True needs cache_length")
      index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
      cache_start = index.value
      positions = cache_start + jnp.arange(length, dtype=jnp.int32)
      key_positions = jnp.arange(cache_length, dtype=jnp.int32)
      index.value = cache_start + length
    else:
      cache_start = None
      positions = key_positions = jnp.arange(length, dtype=jnp.int32)

    bias = None
    if cfg.position_embedding == "relative_bias":
      bias = relative_position.RelativePositionBiases(
          cfg.relpos_num_buckets, cfg.relpos_max_distance, cfg.num_heads, bidirectional=False,
          dtype=jnp.float32, name="relpos_bias")(positions, key_positions)

    layer_kwargs = dict(num_heads=cfg.num_heads, head_dim=cfg.head_dim, mlp_dim=cfg.mlp_dim,
                        dtype=dtype, dropout_rate=cfg.dropout_rate, causal=True,
                        use_rotary=cfg.position_embedding == "rotary",
                        deterministic=deterministic, decode=decode,
                        cache_length=cache_length, num_kv_heads=cfg.num_kv_heads,
                        attention_dropout_rate=cfg.attention_dropout,
                        attention_implementation=cfg.attention_implementation)
    layer_cls = transformer.TransformerLayer
    if cfg.remat_policy != "none":
      layer_cls = nn.remat(layer_cls, policy=_remat_policy(cfg.remat_policy),
                           prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(layer_cls, variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                      length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "stack"})
      x, _ = stack(**layer_kwargs, name="layers")(x, positions, bias, cache_start)
    else:
      for i in range(cfg.num_layers):
        x, _ = layer_cls(**layer_kwargs, name=f"layers_{i}")(x, positions, bias, cache_start)

    x = linear.RMSNorm(dtype=dtype, name="final_norm")(x[:, length - num_targets:])
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    if return_hidden:
      return x
    return masked_logits(cfg, logits_head(cfg, name="logits_dense")(x))


def logits_head(config: DecoderConfig, name: Optional[str] = None) -> linear.DenseGeneral:
  """The output projection [.., emb_dim] -> [.., padded_target_vocab] (parameters
  'logits_dense'); also applied chunk by chunk by the chunked loss. With parallel_levels
  K, K heads in one kernel: [.., K * padded_target_vocab]."""
  return linear.DenseGeneral(config.padded_target_vocab * max(config.parallel_levels, 1),
                             ("embed", "vocab"), dtype=config.jnp_dtype, name=name)


def masked_logits(config: DecoderConfig, logits: jnp.ndarray) -> jnp.ndarray:
  """Projected logits [B, T, padded_vocab] -> float32, padding ids (>= target_vocab_size)
  masked to -1e10. With parallel_levels K: [B, T, K * padded_vocab] -> [B, T, K,
  padded_vocab], head k keeping level k's ids only."""
  logits = nn.with_logical_constraint(logits.astype(jnp.float32),
                                      ("batch", "length", "vocab"))
  ids = jnp.arange(config.padded_target_vocab)
  if not config.parallel_levels:
    return jnp.where(ids < config.target_vocab_size, logits, -1e10)
  levels = config.parallel_levels
  logits = logits.reshape(logits.shape[:-1] + (levels, config.padded_target_vocab))
  in_level = (ids[None, :] // config.level_codes) == jnp.arange(levels)[:, None]
  return jnp.where(in_level & (ids < config.target_vocab_size), logits, -1e10)


@gin.configurable
def decoder_only_lm(config: DecoderConfig = gin.REQUIRED) -> DecoderOnlyLM:
  """gin factory: `DecoderOnlyLMModel.module = @decoder_only_lm()`."""
  return DecoderOnlyLM(config)


def abstract_params(config: DecoderConfig):
  """The parameter tree of `DecoderOnlyLM(config)` as ShapeDtypeStructs (nothing allocated):
  what a checkpoint or bundle holding this model's parameters must match."""
  tokens = jnp.zeros((1, 4) + ((config.parallel_levels,) if config.parallel_levels else ()),
                     jnp.int32)
  prefix = jnp.zeros((1, 2), jnp.int32) if config.prefix_vocab_size else None
  return jax.eval_shape(lambda: nn.meta.unbox(DecoderOnlyLM(config).init(
      jax.random.key(0), tokens, prefix, deterministic=True))["params"])
