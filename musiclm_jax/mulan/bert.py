"""BERT encoder in Flax: MuLan's text tower backbone.

Post-norm Transformer encoder exactly as Devlin et al. / Hugging Face `BertModel`, so the
published checkpoints load unchanged (`pretrained_bert.load_bert_folder`):

  h = LayerNorm(word[ids] + position[0..L) + token_type[type_ids])
  per layer:  h = LayerNorm(h + Attention(h));  h = LayerNorm(h + W2 gelu(W1 h))

Attention is the project's `MultiHeadAttention` (bidirectional, with biases); padded keys
(token id == pad_token_id) are masked. Parameters carry logical axis names, so the tower
shards with the same rules as every other model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.layers import attention, linear

ACTIVATION_AXES = ("batch", "length", "embed")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT sizes (the fields of a Hugging Face `config.json` that the math depends on)."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  dtype: str = "float32"

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                       f"num_attention_heads={self.num_attention_heads}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_hf_config(cls, hf: Mapping[str, Any], source: str = "config.json") -> "BertConfig":
    """From a parsed Hugging Face BERT `config.json`. Raises ValueError naming `source` for
    anything that is not a BERT this module computes exactly."""
    model_type = hf.get("model_type")
    if model_type != "bert":
      raise ValueError(f"{source}: model_type is {model_type!r}, not 'bert'")
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
      raise ValueError(f"{source}: hidden_act={act!r}; only 'gelu' (exact) is supported")
    pos = hf.get("position_embedding_type", "absolute")
    if pos != "absolute":
      raise ValueError(f"{source}: position_embedding_type={pos!r}; only 'absolute' is "
                       "supported")
    fields = {f.name for f in dataclasses.fields(cls)} - {"dtype"}
    missing = sorted({"vocab_size", "hidden_size", "num_hidden_layers",
                      "num_attention_heads", "intermediate_size"} - set(hf))
    if missing:
      raise ValueError(f"{source}: missing BERT fields {missing}")
    return cls(**{k: v for k, v in hf.items() if k in fields})


class BertLayer(nn.Module):
  """One post-norm encoder layer: [batch, length, embed] -> same."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray, key_bias: jnp.ndarray, deterministic: bool
               ) -> jnp.ndarray:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    positions = jnp.arange(x.shape[1])
    h = attention.MultiHeadAttention(
        cfg.num_attention_heads, cfg.head_dim, dtype=dtype,
        dropout_rate=cfg.attention_probs_dropout_prob, causal=False, use_bias=True,
        name="self_attention")(x, positions, key_bias, None, deterministic)
    h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
    x = linear.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype,
                         name="attention_norm")(x + h)
    h = linear.DenseGeneral(cfg.intermediate_size, ("embed", "mlp"), dtype=dtype,
                            use_bias=True, name="intermediate")(x)
    h = nn.with_logical_constraint(nn.gelu(h, approximate=False), ("batch", "length", "mlp"))
    h = linear.DenseGeneral(cfg.hidden_size, ("mlp", "embed"), dtype=dtype, use_bias=True,
                            name="output")(h)
    h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
    x = linear.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name="output_norm")(x + h)
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


class BertEncoder(nn.Module):
  """Token ids -> contextual embeddings.

  __call__(token_ids [B, L] int, token_type_ids [B, L] | None) ->
    [B, L, hidden] (or, with return_all_layers, the embeddings and every layer's output:
    num_hidden_layers + 1 arrays, as Hugging Face's `hidden_states`).
  Ids equal to pad_token_id are padding: no other token attends to them.
  """
  config: BertConfig

  @nn.compact
  def __call__(self, token_ids: jnp.ndarray, token_type_ids: Optional[jnp.ndarray] = None,
               deterministic: bool = True, return_all_layers: bool = False
               ) -> jnp.ndarray | List[jnp.ndarray]:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    batch, length = token_ids.shape
    if length > cfg.max_position_embeddings:
      raise ValueError(f"{length} tokens exceed max_position_embeddings="
                       f"{cfg.max_position_embeddings}")
    init = nn.initializers.normal(0.02)
    embed = lambda name, rows, axes: self.param(
        name, nn.with_logical_partitioning(init, axes), (rows, cfg.hidden_size), jnp.float32)
    word = embed("word_embeddings", cfg.vocab_size, ("vocab", "embed"))
    position = embed("position_embeddings", cfg.max_position_embeddings, (None, "embed"))
    token_type = embed("token_type_embeddings", cfg.type_vocab_size, (None, "embed"))
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(token_ids)
    x = (jnp.take(word, token_ids, axis=0) + position[None, :length]
         + jnp.take(token_type, token_type_ids, axis=0))
    x = linear.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, name="embeddings_norm")(x)
    x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)

    # Additive key mask, broadcast over heads and queries: [B, heads, 1, L].
    visible = token_ids != cfg.pad_token_id
    key_bias = jnp.where(visible, 0.0, attention.NEG_INF)[:, None, None, :]
    key_bias = jnp.broadcast_to(key_bias, (batch, cfg.num_attention_heads, 1, length))
    layers = [x]
    for i in range(cfg.num_hidden_layers):
      x = BertLayer(cfg, name=f"layer_{i}")(x, key_bias, deterministic)
      layers.append(x)
    return layers if return_all_layers else x


def mean_pool(hidden: jnp.ndarray, token_ids: jnp.ndarray, pad_token_id: int = 0
              ) -> jnp.ndarray:
  """Average of the non-padding positions: [B, L, E] -> [B, E] (sentence-transformers'
  mean pooling). An all-padding row gives zeros."""
  mask = (token_ids != pad_token_id).astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
  return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def param_shapes(config: BertConfig, length: int = 8) -> Mapping[str, Any]:
  """The unboxed parameter shapes of a `BertEncoder` (no memory allocated)."""
  module = BertEncoder(config)
  ids = jnp.ones((1, length), jnp.int32)
  return jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.key(0), ids)["params"]))


def count_parameters(config: BertConfig) -> int:
  return int(sum(x.size for x in jax.tree.leaves(param_shapes(config))))
