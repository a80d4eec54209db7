"""w2v-BERT: network, span masking, losses and the T5X-style training model.

    audio [B, samples] at 16 kHz
      -> log-mel, 100 frames/s -> two stride-2 convs -> [B, frames, emb_dim] at 25 frames/s
         (FeatureEncoder: hop = 4 * mel hop = 640 samples)
      ├─ unmasked ─> GumbelQuantizer ─> quantized targets q_t, token ids z_t
      └─ span masking (masked frames := learned mask embedding)
           -> contrastive conformer stack -> context c_t
           -> MLM conformer stack -> MLM head: logits over the codebook per masked frame

  loss = contrastive_weight * L_contrastive + diversity_weight * L_diversity
         + mlm_weight * L_mlm [+ reconstruction_weight * L_reconstruction]
  L_contrastive  InfoNCE at masked frames: cos(c_t, q_t) / kappa against K distractors q_s
                 drawn from other masked frames of the same clip (wav2vec 2.0)
  L_mlm          cross-entropy of the MLM head against z_t at masked frames
  L_diversity    (G V - sum_g perplexity(mean softmax of group g)) / (G V): uses the codebook
  L_reconstruction  (optional, off by default) MERT's "musical teacher": mean squared error
                 of a linear head on the MLM module's output against the per-clip normalised
                 log semitone spectrogram (a CQT from the STFT, 12 bins per octave) of each
                 masked frame. The paper's objectives carry no pitch target: their codes
                 may follow loudness and timbre alone; this one makes the network keep the
                 pitch a music tokenizer needs (Li et al. 2023, MERT).

The target quantizer (a documented simplification of w2v-BERT's): wav2vec 2.0's Gumbel-softmax
product quantizer with `codebook_groups` groups of `codebook_size` entries each (default one
group of 1024). In training each frame picks a code by a hard straight-through Gumbel-softmax
sample at an annealed temperature (2 -> 0.5); the MLM targets are the noise-free argmax ids,
one id per group (the MLM head predicts every group). The temperature's step counter is the
model's only non-parameter state ('w2v_bert_state' collection, in flax_mutables).
`W2vBertConfig.target_quantizer = 'random_projection'` replaces it with BEST-RQ's frozen
random-projection quantizer of the log-mel (`random_projection_quantize`): targets that
cannot collapse, for runs too short or batches too small for the Gumbel one to settle.

Deviations from the paper, and why: masked frames take a learned mask embedding (w2v-BERT
uses random vectors); pre-norms are RMSNorm and the conformer's BatchNorm a layer norm
(layers/conformer.py); positions come from a shared T5 relative bias (the conformer's
Transformer-XL encoding plays the same role); the log-mel input is normalised per clip (its
mean level over all bands and frames removed, one global scale), which makes the features,
and so the tokens, nearly invariant to gain (up to the log floor) at the price of a
dependence on the whole clip. Not per band: removing each band's mean (speech's cepstral
mean normalisation) erases the spectrum of anything sustained, a held note or chord, and
with it the pitch (a linear probe reads the pitch class of rendered notes on unseen
instruments from pooled log-mel at 0.94 with one mean per clip, 0.34 with one per band).

Batches: {'audio': float32 [batch, samples]} at `W2vBertConfig.sample_rate`; frames =
samples // hop_length.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from musiclm_jax.audio import features
from musiclm_jax.layers import conformer, linear, relative_position
from musiclm_jax.training import models as models_lib

STATE = "w2v_bert_state"
SUBSAMPLING = 4  # two stride-2 convolutions over time
NEG_INF = -1e9
POSITION_EMBEDDINGS = ("relative_bias", "rotary")
TARGET_QUANTIZERS = ("gumbel", "random_projection")
RANDOM_PROJECTION_SEED = 1234  # the frozen BEST-RQ matrices: fixed, so never checkpointed


@gin.configurable
@dataclasses.dataclass(frozen=True)
class W2vBertConfig:
  """Sizes and training settings of w2v-BERT. Defaults: the `paper` model (≈600M).

  Attributes:
    sample_rate: Hz of the input audio.
    num_mels, mel_frame_length, mel_hop_length: log-mel input (25 ms windows, 10 ms hop:
      100 frames/s); the feature encoder subsamples 4x to 25 frames/s.
    fmin, fmax: mel band edges in Hz (fmax None = sample_rate / 2).
    subsampling_channels: channels of the two stride-2 2-D convolutions.
    emb_dim, num_heads, head_dim, mlp_dim, conv_kernel_size: conformer sizes.
    num_contrastive_layers, num_mlm_layers: conformer blocks of the two modules.
    dropout_rate: dropout in the conformer blocks and on the encoder output.
    position_embedding: 'relative_bias' (one T5 bias shared by all blocks) or 'rotary'.
    relpos_num_buckets, relpos_max_distance: T5 relative bias buckets.
    codebook_groups, codebook_size: target quantizer: G groups x V entries.
    codevector_dim: size of a quantized vector (G groups of codevector_dim / G).
    quantizer_logit_init_std: standard deviation of each weight of the quantizer's logits
      projection at initialisation. wav2vec 2.0 draws them from N(0, 1), not N(0, 1 / fan
      in): over layer-normed frames the logits then start with a spread of sqrt(emb_dim),
      so a Gumbel sample is nearly the argmax and the targets follow the input from step
      0. With unit-scale logits the samples are close to uniform noise, the contrastive
      task has nothing to predict, and the diversity loss flattens the logits further.
    target_quantizer: 'gumbel' (w2v-BERT's learned Gumbel-softmax quantizer, trained with
      the diversity term) or 'random_projection' (BEST-RQ, Chiu et al. 2022, w2v-BERT's
      successor at Google: a frozen random projection of the normalised log-mel, stacked to
      the frame rate, to `random_projection_dim`, and the nearest of `codebook_size` frozen
      random unit vectors by cosine; stationary targets that cannot collapse, no Gumbel
      noise; the diversity term has nothing to train, and its logits are the cosines, so
      only `argmax_code_perplexity` of the code metrics means anything). One group.
    random_projection_dim: the projection's width ('random_projection' only; 16 in BEST-RQ).
    contrastive_dim: space of the contrastive task (context and targets projected to it).
    mask_prob: probability that a frame starts a masked span.
    mask_length: frames per masked span (spans may overlap).
    num_negatives: distractors K per masked frame.
    contrastive_temperature: kappa, the InfoNCE temperature.
    gumbel_temperature_max, gumbel_temperature_min, gumbel_temperature_decay: the Gumbel
      temperature is max(max * decay^step, min).
    contrastive_weight, mlm_weight, diversity_weight: loss weights.
    reconstruction_weight: weight of the semitone-spectrogram reconstruction loss at masked
      frames (module docstring); 0 (the paper's w2v-BERT) builds no reconstruction head.
    reconstruction_bins, reconstruction_fmin, reconstruction_frame_length: its target: that
      many semitones from fmin Hz, STFT windows of frame_length samples at the frame rate.
    feature_grad_scale: the gradient into the feature encoder is scaled by this
      (wav2vec 2.0's feature_grad_mult, 0.1 there): the encoder feeds the target quantizer,
      and left at full speed it can move every frame to one code (a collapse that makes
      both tasks trivial).
    layer_scale_init: None (the paper's blocks), or each conformer block's residual
      branches start scaled by this learned per-channel factor (LayerScale; see
      `layers.conformer.ConformerBlock`: without it a random-initialised stack keeps
      little of its input, and training must first undo that).
    remat: rematerialise each conformer block in the backward pass.
    dtype: computation dtype; parameters stay float32.
  """
  sample_rate: int = 16000
  num_mels: int = 80
  mel_frame_length: int = 400
  mel_hop_length: int = 160
  fmin: float = 0.0
  fmax: Optional[float] = None
  subsampling_channels: int = 128
  emb_dim: int = 1024
  num_heads: int = 8
  head_dim: int = 128
  mlp_dim: int = 4096
  conv_kernel_size: int = 5
  num_contrastive_layers: int = 12
  num_mlm_layers: int = 12
  dropout_rate: float = 0.1
  position_embedding: str = "relative_bias"
  relpos_num_buckets: int = 32
  relpos_max_distance: int = 128
  codebook_groups: int = 1
  codebook_size: int = 1024
  codevector_dim: int = 768
  quantizer_logit_init_std: float = 1.0
  target_quantizer: str = "gumbel"
  random_projection_dim: int = 16
  contrastive_dim: int = 768
  mask_prob: float = 0.065
  mask_length: int = 10
  num_negatives: int = 100
  contrastive_temperature: float = 0.1
  gumbel_temperature_max: float = 2.0
  gumbel_temperature_min: float = 0.5
  gumbel_temperature_decay: float = 0.999995
  contrastive_weight: float = 1.0
  mlm_weight: float = 1.0
  diversity_weight: float = 0.1
  reconstruction_weight: float = 0.0
  reconstruction_bins: int = 84
  reconstruction_fmin: float = 65.41
  reconstruction_frame_length: int = 4096
  feature_grad_scale: float = 1.0
  layer_scale_init: Optional[float] = None
  remat: bool = False
  dtype: str = "float32"

  def __post_init__(self):
    if not 0.0 <= self.mask_prob <= 1.0:
      raise ValueError(f"mask_prob must be in [0, 1], got {self.mask_prob}")
    if self.mask_length < 1:
      raise ValueError(f"mask_length must be >= 1, got {self.mask_length}")
    if self.codevector_dim % self.codebook_groups:
      raise ValueError(f"codevector_dim={self.codevector_dim} is not a multiple of "
                       f"codebook_groups={self.codebook_groups}")
    if self.position_embedding not in POSITION_EMBEDDINGS:
      raise ValueError(f"position_embedding={self.position_embedding!r}; expected one of "
                       f"{POSITION_EMBEDDINGS}")
    if self.target_quantizer not in TARGET_QUANTIZERS:
      raise ValueError(f"target_quantizer={self.target_quantizer!r}; expected one of "
                       f"{TARGET_QUANTIZERS}")
    if self.target_quantizer == "random_projection" and self.codebook_groups != 1:
      raise ValueError("target_quantizer='random_projection' has one group; got "
                       f"codebook_groups={self.codebook_groups}")
    if self.random_projection_dim < 1:
      raise ValueError(f"random_projection_dim must be >= 1, got {self.random_projection_dim}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r}; expected 'float32' or 'bfloat16'")
    if self.num_negatives < 1:
      raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
    if not 0.0 < self.feature_grad_scale <= 1.0:
      raise ValueError(f"feature_grad_scale must be in (0, 1], got {self.feature_grad_scale}")
    if self.reconstruction_weight < 0:
      raise ValueError(f"reconstruction_weight must be >= 0, got {self.reconstruction_weight}")
    if self.layer_scale_init is not None and not self.layer_scale_init > 0:
      raise ValueError(f"layer_scale_init must be None or > 0, got {self.layer_scale_init}")
    if self.reconstruction_weight and not (self.reconstruction_fmin > 0
                                           and self.reconstruction_bins >= 1):
      raise ValueError(f"reconstruction_fmin must be > 0 and reconstruction_bins >= 1, got "
                       f"{self.reconstruction_fmin} and {self.reconstruction_bins}")
    if self.reconstruction_weight and self.reconstruction_fmin * 2.0 ** (
        (self.reconstruction_bins - 1) / 12) >= self.sample_rate / 2:
      raise ValueError(f"reconstruction_bins={self.reconstruction_bins} semitones from "
                       f"reconstruction_fmin={self.reconstruction_fmin} Hz pass the Nyquist "
                       f"frequency of sample_rate={self.sample_rate}")
    if not self.quantizer_logit_init_std > 0:
      raise ValueError("quantizer_logit_init_std must be > 0, got "
                       f"{self.quantizer_logit_init_std}")

  @property
  def hop_length(self) -> int:
    """Input samples per output frame (640 at the defaults)."""
    return self.mel_hop_length * SUBSAMPLING

  @property
  def frame_rate(self) -> float:
    """Frames (tokens) per second: 25 at the defaults."""
    return self.sample_rate / self.hop_length

  @property
  def num_layers(self) -> int:
    return self.num_contrastive_layers + self.num_mlm_layers

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  def num_frames(self, num_samples: int) -> int:
    """Output frames for a clip of num_samples: num_samples // hop_length."""
    return num_samples // self.hop_length

  def gumbel_temperature(self, step: jnp.ndarray) -> jnp.ndarray:
    decayed = self.gumbel_temperature_max * jnp.power(
        jnp.float32(self.gumbel_temperature_decay), jnp.asarray(step, jnp.float32))
    return jnp.maximum(decayed, self.gumbel_temperature_min)


# ---------------------------------------------------------------------------------------
# Span masking.


def span_mask(rng: jax.Array, shape: Tuple[int, int], mask_prob: float, span_length: int,
              ensure_one_span: bool = True) -> jnp.ndarray:
  """wav2vec 2.0 span masking: bool [batch, length], True = masked.

  Every frame that leaves room for a whole span (start <= length - span_length) starts one
  with probability `mask_prob`; a span masks `span_length` consecutive frames (spans may
  overlap and merge, never run past the end). With `ensure_one_span`, a row that drew no
  start gets one at a uniform position, so every clip has frames to predict.
  Deterministic in `rng`, and the same on any device layout (jax's random bits do not
  depend on sharding).
  """
  batch, length = shape
  if span_length > length:
    raise ValueError(f"span_length {span_length} is longer than the {length} frames")
  start_rng, forced_rng = jax.random.split(rng)
  room = jnp.arange(length)[None, :] <= length - span_length
  starts = jax.random.bernoulli(start_rng, mask_prob, shape) & room
  if ensure_one_span:
    forced = jax.random.randint(forced_rng, (batch,), 0, length - span_length + 1)
    none = ~jnp.any(starts, axis=1)
    starts = starts | (none[:, None] & (jnp.arange(length)[None, :] == forced[:, None]))
  # Frame t is masked when a span starts in [t - span_length + 1, t].
  count = jnp.cumsum(starts.astype(jnp.int32), axis=1)
  before = jnp.pad(count, ((0, 0), (span_length, 0)))[:, :length]
  return count - before > 0


def expected_mask_fraction(mask_prob: float, span_length: int, length: int) -> float:
  """E[masked frames] / length of `span_mask` without `ensure_one_span`.

  Frame t is unmasked iff none of the n_t possible starts of a span covering it, those in
  [max(0, t - M + 1), min(t, length - M)], did start one: P(masked_t) = 1 - (1 - p)^n_t.
  (With ensure_one_span it is higher by at most M / length * (1 - p)^(length - M + 1).)
  """
  t = np.arange(length)
  starts = np.minimum(t, length - span_length) - np.maximum(0, t - span_length + 1) + 1
  return float(np.mean(1.0 - (1.0 - mask_prob) ** starts))


# ---------------------------------------------------------------------------------------
# Losses.


def _l2_normalize(x: jnp.ndarray) -> jnp.ndarray:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def sample_negatives(rng: jax.Array, mask: jnp.ndarray, num_negatives: int) -> jnp.ndarray:
  """Distractor frames for every frame, as a selection bool [B, T (query), T (distractor)].

  For query frame t of clip b, K distinct frames drawn uniformly, without replacement, from
  the masked frames of clip b other than t: those whose uniform noise is among the K
  largest of the candidates' (static shapes, no gathers). With fewer than K candidates,
  all of them.
  """
  batch, length = mask.shape
  k = min(num_negatives, length - 1)
  candidates = mask[:, None, :] & ~jnp.eye(length, dtype=bool)[None]
  noise = jnp.where(candidates, jax.random.uniform(rng, (batch, length, length)), -1.0)
  kth_largest = jax.lax.top_k(noise, k)[0][..., -1:]
  return candidates & (noise >= kth_largest)


def contrastive_loss(context: jnp.ndarray, targets: jnp.ndarray, mask: jnp.ndarray,
                     codes: jnp.ndarray, rng: jax.Array, num_negatives: int,
                     temperature: float) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """wav2vec 2.0's InfoNCE over masked frames: (mean loss, accuracy), float32 scalars.

  The accuracy counts only the masked frames left with at least one distractor: a frame
  whose every candidate shares its code (a collapsed codebook) has nothing to beat, a loss
  of 0, and says nothing about the task (0 when no frame has a distractor).

  Args:
    context: [B, T, C] contrastive-module outputs (projected).
    targets: [B, T, C] quantized targets of the unmasked input (projected).
    mask: bool [B, T], the frames to predict.
    codes: int [B, T, G] the code ids behind `targets`: a distractor with the positive's
      very ids is the positive itself, so it is dropped (as wav2vec 2.0 does).
    rng: picks the distractors (`sample_negatives`).
    num_negatives: K distractors per masked frame.
    temperature: kappa; logits are cosine similarities / kappa.
  """
  c, q = _l2_normalize(context), _l2_normalize(targets)
  similarity = jnp.einsum("btc,bsc->bts", c, q) / temperature  # query t, target s
  positive = jnp.einsum("btc,btc->bt", c, q) / temperature
  same_code = jnp.all(codes[:, :, None, :] == codes[:, None, :, :], axis=-1)
  selected = sample_negatives(rng, mask, num_negatives) & ~same_code
  negatives = jnp.where(selected, similarity, NEG_INF)
  nll = jnp.logaddexp(positive, jax.nn.logsumexp(negatives, axis=-1)) - positive
  correct = (positive > jnp.max(negatives, axis=-1)).astype(jnp.float32)
  weights = mask.astype(jnp.float32)
  scored = weights * jnp.any(selected, axis=-1).astype(jnp.float32)
  return (jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0),
          jnp.sum(correct * scored) / jnp.maximum(jnp.sum(scored), 1.0))


def masked_prediction_loss(logits: jnp.ndarray, targets: jnp.ndarray, mask: jnp.ndarray
                           ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """MLM cross-entropy at masked frames: logits [B, T, G, V], targets int [B, T, G].

  Returns (loss, accuracy), each averaged over groups and masked frames.
  """
  logits = logits.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - target_logit, axis=-1)
  correct = jnp.mean((jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32), axis=-1)
  weights = mask.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weights), 1.0)
  return jnp.sum(nll * weights) / count, jnp.sum(correct * weights) / count


def scale_gradient(x: jnp.ndarray, scale: float) -> jnp.ndarray:
  """x in the forward pass; the gradient flowing back through it times `scale`."""
  if scale == 1.0:
    return x
  return scale * x + (1.0 - scale) * jax.lax.stop_gradient(x)


def diversity_loss(logits: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """wav2vec 2.0's codebook diversity penalty from quantizer logits [B, T, G, V].

  p_g = softmax averaged over every frame of the (global) batch; returns
  ((G V - sum_g exp(H(p_g))) / (G V), sum_g exp(H(p_g))): 0 when all codes are equally used.
  """
  groups, entries = logits.shape[-2:]
  probs = jnp.mean(jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(
      -1, groups, entries), axis=0)
  perplexity = jnp.sum(jnp.exp(-jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-10)), axis=-1)))
  total = groups * entries
  return (total - perplexity) / total, perplexity


def code_perplexities(logits: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Two views of the quantizer's codes from its logits [B, T, G, V], each summed over groups.

  Returns (argmax_perplexity, frame_perplexity):
    argmax_perplexity: exp(entropy) of the histogram of the frames' argmax codes, the codes
      actually used as targets (1: every frame has the same code).
    frame_perplexity: exp(mean entropy of each frame's own softmax): 1 when each frame's
      code is certain, V when its logits are flat. The diversity loss's perplexity (of the
      *mean* softmax) is high both for confident, diverse codes and for flat logits that
      choose nothing; these two tell the cases apart (targets that follow the input have a
      high argmax and a low frame perplexity).
  """
  groups, entries = logits.shape[-2:]
  logits = logits.astype(jnp.float32).reshape(-1, groups, entries)
  entropy = lambda p: -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-10)), axis=-1)
  histogram = jnp.mean(jax.nn.one_hot(jnp.argmax(logits, axis=-1), entries), axis=0)
  frame_entropy = jnp.mean(entropy(jax.nn.softmax(logits, axis=-1)), axis=0)
  return jnp.sum(jnp.exp(entropy(histogram))), jnp.sum(jnp.exp(frame_entropy))


# ---------------------------------------------------------------------------------------
# The network.


def normalized_log_mel(wave: jnp.ndarray, config: W2vBertConfig) -> jnp.ndarray:
  """Audio [B, samples] -> the feature encoder's input [B, 4 * frames, num_mels].

  Log-mel at 100 frames/s, normalised per clip: the mean level over bands and frames
  removed (gain invariance; the spectrum's shape is kept, see the module docstring), then
  scaled to unit RMS.
  """
  frames = config.num_frames(wave.shape[-1])
  if frames < 1:
    raise ValueError(f"w2v-BERT needs at least {config.hop_length} samples (one frame), got "
                     f"{wave.shape[-1]}")
  log_mel = features.log_mel_spectrogram(
      wave, config.sample_rate, config.mel_frame_length, config.mel_hop_length,
      num_mels=config.num_mels, fmin=config.fmin, fmax=config.fmax, center=True)
  log_mel = log_mel[:, :frames * SUBSAMPLING]  # centred frames: 1 + samples // hop of them
  log_mel = log_mel - jnp.mean(log_mel, axis=(1, 2), keepdims=True)
  return log_mel * jax.lax.rsqrt(jnp.mean(jnp.square(log_mel), axis=(1, 2), keepdims=True)
                                 + 1e-5)


def semitone_targets(wave: jnp.ndarray, config: W2vBertConfig) -> jnp.ndarray:
  """Audio [B, samples] -> the reconstruction targets [B, frames, reconstruction_bins].

  The log semitone spectrogram, one frame per token frame (windows centred on multiples
  of hop_length), normalised per clip as the log-mel input is (`normalized_log_mel`).
  """
  cfg = config
  frames = cfg.num_frames(wave.shape[-1])
  spectrum = features.log_semitone_spectrogram(
      wave, cfg.sample_rate, cfg.reconstruction_frame_length, cfg.hop_length,
      cfg.reconstruction_bins, cfg.reconstruction_fmin)[:, :frames]
  spectrum = spectrum - jnp.mean(spectrum, axis=(1, 2), keepdims=True)
  return spectrum * jax.lax.rsqrt(jnp.mean(jnp.square(spectrum), axis=(1, 2), keepdims=True)
                                  + 1e-5)


def reconstruction_loss(predicted: jnp.ndarray, targets: jnp.ndarray, mask: jnp.ndarray
                        ) -> jnp.ndarray:
  """Mean squared error over bins and masked frames: predicted, targets [B, T, bins]."""
  error = jnp.mean(jnp.square(predicted.astype(jnp.float32) - targets), axis=-1)
  weights = mask.astype(jnp.float32)
  return jnp.sum(error * weights) / jnp.maximum(jnp.sum(weights), 1.0)


class FeatureEncoder(nn.Module):
  """Audio [B, samples] -> frames [B, samples // hop_length, emb_dim].

  Log-mel (100 frames/s), normalised per clip (`normalized_log_mel`), then two 3x3
  stride-(2, 2) convolutions with swish over (time, mel), and a linear projection of each
  frame's (mel, channel) plane to emb_dim, layer-normed.
  """
  config: W2vBertConfig

  def _conv(self, x: jnp.ndarray, features: int, name: str) -> jnp.ndarray:
    dtype = self.config.jnp_dtype
    kernel = self.param(f"{name}_kernel", nn.with_logical_partitioning(
        linear.fan_in_normal(9 * x.shape[-1]), (None, None, "conv_in", "conv_out")),
                        (3, 3, x.shape[-1], features), jnp.float32)
    bias = self.param(f"{name}_bias", nn.with_logical_partitioning(
        nn.initializers.zeros, ("conv_out",)), (features,), jnp.float32)
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), window_strides=(2, 2),
        padding=((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return nn.swish(y + bias.astype(dtype))

  @nn.compact
  def __call__(self, wave: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    cfg = self.config
    log_mel = normalized_log_mel(wave, cfg)  # raises on clips shorter than one frame
    x = self._conv(log_mel[..., None], cfg.subsampling_channels, "conv_0")
    x = self._conv(x, cfg.subsampling_channels, "conv_1")  # [B, frames, mels / 4, C]
    x = linear.DenseGeneral(cfg.emb_dim, (None, "conv_out", "embed"), contract_dims=2,
                            dtype=cfg.jnp_dtype, name="projection")(x)
    x = linear.LayerNorm("embed", dtype=cfg.jnp_dtype, name="norm")(x)
    x = nn.with_logical_constraint(x, conformer.ACTIVATION_AXES)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class GumbelQuantizer(nn.Module):
  """Gumbel-softmax product quantizer (wav2vec 2.0): [B, T, D] -> codevectors.

  Attributes:
    groups, entries: G codebooks of V entries; a frame's code is one entry per group.
    codevector_dim: size of the output (concatenation of G entries of codevector_dim / G).
    logit_init_std: standard deviation of each weight of the logits projection at init
      (W2vBertConfig.quantizer_logit_init_std).
    dtype: computation dtype.
  """
  groups: int
  entries: int
  codevector_dim: int
  logit_init_std: float = 1.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, temperature: jnp.ndarray, sample: bool
               ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Returns (quantized [B, T, codevector_dim], codes int32 [B, T, G],
    logits float32 [B, T, G, V]).

    sample=True (training): each group's entry is a hard Gumbel-softmax sample at
    `temperature` (rng stream 'gumbel'), with straight-through gradients to the logits;
    sample=False: the argmax entry.
    """
    logits = linear.DenseGeneral((self.groups, self.entries), ("embed", None, "codebook"),
                                 dtype=self.dtype, init_scale=self.logit_init_std ** 2
                                 * x.shape[-1], name="logits")(x).astype(jnp.float32)
    if sample:
      noisy = logits + jax.random.gumbel(self.make_rng("gumbel"), logits.shape)
      soft = jax.nn.softmax(noisy / temperature, axis=-1)
      codes = jnp.argmax(noisy, axis=-1)
      hard = jax.nn.one_hot(codes, self.entries, dtype=jnp.float32)
      weights = hard + soft - jax.lax.stop_gradient(soft)
    else:
      codes = jnp.argmax(logits, axis=-1)
      weights = jax.nn.one_hot(codes, self.entries, dtype=jnp.float32)
    codebook = self.param("codebook", nn.with_logical_partitioning(
        nn.initializers.uniform(1.0), (None, "codebook", "embed")),
                          (self.groups, self.entries, self.codevector_dim // self.groups),
                          jnp.float32)
    quantized = jnp.einsum("btgv,gvd->btgd", weights.astype(self.dtype),
                           codebook.astype(self.dtype))
    quantized = quantized.reshape(quantized.shape[:2] + (self.codevector_dim,))
    return quantized, codes.astype(jnp.int32), logits


def random_projection_quantize(wave: jnp.ndarray, config: W2vBertConfig
                               ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """BEST-RQ's frozen target quantizer: audio [B, samples] -> (codevectors [B, T,
  codevector_dim], codes int32 [B, T, 1], cosine logits float32 [B, T, 1, V]).

  Each frame's SUBSAMPLING normalised log-mel frames, stacked ([4 * num_mels]), go through a
  fixed Gaussian projection to `random_projection_dim`, are l2-normalised, and pick the
  nearest of `codebook_size` fixed random unit vectors (the largest cosine). The frame's
  codevector is a fixed random vector of that code. Nothing here is trained (no gradient
  flows); the matrices come from RANDOM_PROJECTION_SEED, so every run and host has the same.
  """
  cfg = config
  log_mel = normalized_log_mel(wave, cfg)
  stacked = log_mel.reshape(log_mel.shape[0], -1, SUBSAMPLING * cfg.num_mels)
  projection_key, codebook_key, vector_key = jax.random.split(
      jax.random.key(RANDOM_PROJECTION_SEED), 3)
  width, dim = stacked.shape[-1], cfg.random_projection_dim
  projection = jax.random.normal(projection_key, (width, dim)) * np.sqrt(2.0 / (width + dim))
  codebook = _l2_normalize(jax.random.normal(codebook_key, (cfg.codebook_size, dim)))
  logits = jnp.einsum("btd,vd->btv", _l2_normalize(stacked @ projection), codebook)
  codes = jnp.argmax(logits, axis=-1)
  codevectors = jax.random.normal(vector_key, (cfg.codebook_size, cfg.codevector_dim))
  return (jax.lax.stop_gradient(codevectors[codes]), codes[..., None].astype(jnp.int32),
          jax.lax.stop_gradient(logits[:, :, None, :]))


class W2vBert(nn.Module):
  """The w2v-BERT network (module docstring). Parameters:

    feature_encoder, quantizer, mask_embedding [emb_dim], relpos_bias,
    contrastive_module (ConformerStack), mlm_module (ConformerStack),
    context_projection, target_projection (to the contrastive space), mlm_head,
    reconstruction_head (only with reconstruction_weight > 0).
  """
  config: W2vBertConfig

  def setup(self):
    cfg = self.config
    dtype = cfg.jnp_dtype
    self.feature_encoder = FeatureEncoder(cfg)
    if cfg.target_quantizer == "gumbel":
      self.quantizer = GumbelQuantizer(cfg.codebook_groups, cfg.codebook_size,
                                       cfg.codevector_dim, cfg.quantizer_logit_init_std,
                                       dtype=dtype)
    self.mask_embedding = self.param(
        "mask_embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                       ("embed",)),
        (cfg.emb_dim,), jnp.float32)
    if cfg.position_embedding == "relative_bias":
      self.relpos_bias = relative_position.RelativePositionBiases(
          cfg.relpos_num_buckets, cfg.relpos_max_distance, cfg.num_heads, bidirectional=True)
    stack = lambda layers: conformer.ConformerStack(
        layers, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.conv_kernel_size, dtype=dtype,
        dropout_rate=cfg.dropout_rate, use_rotary=cfg.position_embedding == "rotary",
        remat=cfg.remat, layer_scale_init=cfg.layer_scale_init)
    self.contrastive_module = stack(cfg.num_contrastive_layers)
    self.mlm_module = stack(cfg.num_mlm_layers)
    # The contrastive space is a head's hidden width: 'mlp' (sharded like feed-forwards).
    self.context_projection = linear.DenseGeneral(cfg.contrastive_dim, ("embed", "mlp"),
                                                  dtype=dtype)
    self.target_projection = linear.DenseGeneral(cfg.contrastive_dim, ("embed", "mlp"),
                                                 dtype=dtype)
    self.mlm_head = linear.DenseGeneral((cfg.codebook_groups, cfg.codebook_size),
                                        ("embed", None, "codebook"), dtype=dtype)
    if cfg.reconstruction_weight:
      self.reconstruction_head = linear.DenseGeneral(cfg.reconstruction_bins,
                                                     ("embed", None), dtype=dtype)

  def _positions(self, length: int):
    positions = jnp.arange(length, dtype=jnp.int32)
    bias = (self.relpos_bias(positions, positions)
            if self.config.position_embedding == "relative_bias" else None)
    return positions, bias

  def __call__(self, wave: jnp.ndarray, mask: jnp.ndarray,
               temperature: jnp.ndarray | float = 1.0, train: bool = False
               ) -> Dict[str, jnp.ndarray]:
    """Forward pass for the losses.

    Args:
      wave: [B, samples].
      mask: bool [B, frames] (frames = samples // hop_length), True = masked.
      temperature: Gumbel-softmax temperature (training only).
      train: dropout ('dropout' rng) and Gumbel sampling ('gumbel' rng).
    Returns:
      'context' [B, frames, contrastive_dim], 'targets' [B, frames, contrastive_dim],
      'codes' int32 [B, frames, G] (the codes behind 'targets'), 'quantizer_logits'
      float32 [B, frames, G, V], 'mlm_logits' float32 [B, frames, G, V]; with
      reconstruction_weight > 0 also 'reconstruction' float32 [B, frames, bins].
    """
    deterministic = not train
    x = scale_gradient(self.feature_encoder(wave, deterministic), self.config.feature_grad_scale)
    if mask.shape != x.shape[:2]:
      raise ValueError(f"mask shape {mask.shape} != frames {x.shape[:2]}")
    quantized, codes, quantizer_logits = self._quantize(wave, x, temperature, train)
    x = jnp.where(mask[..., None], self.mask_embedding.astype(x.dtype), x)
    positions, bias = self._positions(x.shape[1])
    context = self.contrastive_module(x, positions, bias, deterministic)
    hidden = self.mlm_module(context, positions, bias, deterministic)
    mlm_logits = self.mlm_head(hidden).astype(jnp.float32)
    out = {"context": self.context_projection(context),
           "targets": self.target_projection(quantized),
           "codes": codes, "quantizer_logits": quantizer_logits,
           "mlm_logits": nn.with_logical_constraint(
               mlm_logits, ("batch", "length", None, "codebook"))}
    if self.config.reconstruction_weight:
      out["reconstruction"] = self.reconstruction_head(hidden).astype(jnp.float32)
    return out

  def _quantize(self, wave: jnp.ndarray, features: jnp.ndarray, temperature, sample: bool):
    """(quantized targets, codes, logits) of the unmasked frames: `GumbelQuantizer` on the
    features, or `random_projection_quantize` on the audio."""
    if self.config.target_quantizer == "random_projection":
      return random_projection_quantize(wave, self.config)
    return self.quantizer(features, temperature, sample=sample)

  def embed(self, wave: jnp.ndarray, layer: int) -> jnp.ndarray:
    """Unmasked audio [B, samples] -> [B, frames, emb_dim], the output of MLM layer `layer`.

    Layers count from 1 (the paper's "7th layer of the MLM module" is layer=7); layer=0 is
    the MLM module's input, the contrastive module's output. Later layers are not run.
    """
    x = self.feature_encoder(wave, True)
    positions, bias = self._positions(x.shape[1])
    context = self.contrastive_module(x, positions, bias, True)
    return self.mlm_module(context, positions, bias, True, num_layers=layer)

  def quantize(self, wave: jnp.ndarray) -> jnp.ndarray:
    """Audio [B, samples] -> the quantizer's (argmax) code ids int32 [B, frames, G]."""
    return self._quantize(wave, self.feature_encoder(wave, True), 1.0, False)[1]


@gin.configurable
def w2v_bert_network(config: W2vBertConfig = gin.REQUIRED) -> W2vBert:
  """gin factory: `W2vBertModel.module = @w2v_bert_network()`."""
  return W2vBert(config)


# ---------------------------------------------------------------------------------------
# The model on the core.


@gin.configurable
class W2vBertModel(models_lib.BaseModel):
  """Self-supervised w2v-BERT training on the T5X-style core (one optimizer)."""

  def __init__(self, module: W2vBert, optimizer_def: optax.GradientTransformation):
    super().__init__(module, optimizer_def)

  @property
  def config(self) -> W2vBertConfig:
    return self.module.config

  @property
  def mutable_collections(self):
    return (STATE,)

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    shape = tuple(input_shapes["audio"])
    wave = jnp.zeros(shape, jnp.float32)
    mask = jnp.zeros((shape[0], self.config.num_frames(shape[1])), bool)
    variables = dict(self.module.init({"params": rng}, wave, mask))
    variables[STATE] = {"step": jnp.zeros((), jnp.int32)}
    return variables

  def _losses(self, params, wave: jnp.ndarray, rng: Optional[jax.Array], step: jnp.ndarray
              ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
    """Loss and summed metrics; rng None = evaluation (fixed mask, no dropout, no noise)."""
    cfg = self.config
    train = rng is not None
    rng = jax.random.key(0) if rng is None else rng
    mask_rng, negatives_rng, dropout_rng, gumbel_rng = jax.random.split(rng, 4)
    wave = jnp.asarray(wave, jnp.float32)
    frames = cfg.num_frames(wave.shape[1])
    mask = span_mask(mask_rng, (wave.shape[0], frames), cfg.mask_prob, cfg.mask_length)
    temperature = cfg.gumbel_temperature(step)
    out = self.module.apply({"params": params}, wave, mask, temperature, train,
                            rngs={"dropout": dropout_rng, "gumbel": gumbel_rng} if train
                            else None)
    contrastive, contrastive_accuracy = contrastive_loss(
        out["context"], out["targets"], mask, out["codes"], negatives_rng, cfg.num_negatives,
        cfg.contrastive_temperature)
    target_ids = jax.lax.stop_gradient(jnp.argmax(out["quantizer_logits"], axis=-1))
    mlm, mlm_accuracy = masked_prediction_loss(out["mlm_logits"], target_ids, mask)
    diversity, perplexity = diversity_loss(out["quantizer_logits"])
    argmax_perplexity, frame_perplexity = code_perplexities(out["quantizer_logits"])
    loss = (cfg.contrastive_weight * contrastive + cfg.mlm_weight * mlm
            + cfg.diversity_weight * diversity)
    extra = {}
    if cfg.reconstruction_weight:
      extra["reconstruction_loss"] = reconstruction_loss(
          out["reconstruction"], semitone_targets(wave, cfg), mask)
      loss = loss + cfg.reconstruction_weight * extra["reconstruction_loss"]
    batch_size = jnp.asarray(wave.shape[0], jnp.float32)
    values = {**extra, "loss": loss, "contrastive_loss": contrastive, "mlm_loss": mlm,
              "diversity_loss": diversity, "contrastive_accuracy": contrastive_accuracy,
              "mlm_accuracy": mlm_accuracy, "code_perplexity": perplexity,
              "argmax_code_perplexity": argmax_perplexity,
              "frame_code_perplexity": frame_perplexity,
              "masked_fraction": jnp.mean(mask.astype(jnp.float32)),
              "gumbel_temperature": temperature}
    metrics = {f"{name}_sum": value * batch_size for name, value in values.items()}
    metrics["weight_sum"] = batch_size
    return loss, metrics

  def loss_fn_with_mutables(self, params, flax_mutables, batch, dropout_rng,
                            group=models_lib.DEFAULT_GROUP):
    if dropout_rng is None:
      raise ValueError("w2v-BERT training needs an rng (masking, dropout, Gumbel noise)")
    step = flax_mutables[STATE]["step"]
    loss, metrics = self._losses(params, batch["audio"], dropout_rng, step)
    return loss, (metrics, {**flax_mutables, STATE: {"step": step + 1}})

  def loss_fn(self, params, batch, dropout_rng, group=models_lib.DEFAULT_GROUP):
    """The training loss at step 0's Gumbel temperature (the trainer uses
    `loss_fn_with_mutables`, which anneals it); dropout_rng None = evaluation."""
    return self._losses(params, batch["audio"], dropout_rng, jnp.zeros((), jnp.int32))

  def eval_fn_with_mutables(self, params, flax_mutables, batch):
    return self._losses(params, batch["audio"], None, flax_mutables[STATE]["step"])

  def embed(self, params, audio: jnp.ndarray, layer: int) -> jnp.ndarray:
    """Audio [B, samples] -> [B, samples // hop_length, emb_dim] from MLM layer `layer`
    (1-based; see `W2vBert.embed`)."""
    if not 0 <= layer <= self.config.num_mlm_layers:
      raise ValueError(f"layer={layer}: the MLM module has layers 1..{self.config.num_mlm_layers}"
                       " (0 = its input)")
    return self.module.apply({"params": params}, jnp.asarray(audio, jnp.float32), layer,
                             method=W2vBert.embed)

  def predict_batch(self, params, batch, rng=None, **unused):
    """The quantizer's code ids of the unmasked audio, int32 [B, frames, G]."""
    return self.module.apply({"params": params}, jnp.asarray(batch["audio"], jnp.float32),
                             method=W2vBert.quantize)

  def score_batch(self, params, batch):
    """Per-example MLM log-likelihood of the target ids at masked frames (fixed mask), [B]."""
    cfg = self.config
    wave = jnp.asarray(batch["audio"], jnp.float32)
    mask = span_mask(jax.random.key(0), (wave.shape[0], cfg.num_frames(wave.shape[1])),
                     cfg.mask_prob, cfg.mask_length)
    out = self.module.apply({"params": params}, wave, mask)
    targets = jnp.argmax(out["quantizer_logits"], axis=-1)
    log_probs = jax.nn.log_softmax(out["mlm_logits"], axis=-1)
    token = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.sum(token, axis=-1) * mask, axis=-1)


def abstract_params(config: W2vBertConfig):
  """The parameter tree of `W2vBert(config)` as ShapeDtypeStructs (nothing allocated)."""
  samples = config.hop_length * 8
  return jax.eval_shape(lambda: nn.meta.unbox(W2vBert(config).init(
      jax.random.key(0), jnp.zeros((1, samples)),
      jnp.zeros((1, config.num_frames(samples)), bool))["params"]))


def count_parameters(config: W2vBertConfig) -> int:
  """Parameters of the network for `config` (no memory allocated)."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_params(config))))
