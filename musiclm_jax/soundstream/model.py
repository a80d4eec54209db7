"""SoundStream (Zeghidour et al. 2021): the codec network and its GAN training model.

  SoundStream       generator: SEANet encoder -> residual VQ -> SEANet decoder.
  Discriminators    the STFT discriminator + three multi-scale waveform discriminators.
  SoundStreamGAN    both, so one variable tree holds params {'generator', 'discriminator'}.
  SoundStreamModel  the T5X-style model: two optimizer groups (discriminator, then
                    generator, each step), EMA codebooks in the 'quantizer' collection; the
                    discriminator warm-up follows the TrainState's step.

Batches: {'audio': float32 [batch, samples]} at `SoundStreamConfig.sample_rate`, samples a
multiple of the hop length (the product of the strides).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from typing import Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from musiclm_jax.audio import features
from musiclm_jax.layers import quantizers
from musiclm_jax.soundstream import discriminators, losses, seanet
from musiclm_jax.training import models as models_lib

GAN_STATE = "gan_state"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SoundStreamConfig:
  """Codec and discriminator sizes. Defaults are the paper's 24 kHz, 6 kbps codec.

  Attributes:
    sample_rate: Hz of the audio the codec reads and writes.
    channels: SEANet base width C (block i has C * 2^(i+1) channels).
    strides: SEANet down/up-sampling per block; hop = prod(strides) samples per frame.
    embedding_dim: D of the frames the quantizer codes.
    num_quantizers, codebook_size: residual VQ levels x codes per level.
    quantizer_dropout: train with a random number of levels per example (any bitrate).
    codebook_decay, dead_code_threshold, kmeans_iterations: see `layers.quantizers`.
    weight_norm: weight-normalise the SEANet convs.
    stft_channels, wave_channels, wave_max_channels, wave_scales: discriminator sizes.
    stft_frame_length, stft_frame_step: the STFT discriminator's window and hop.
    dtype: compute dtype of the networks.
  """
  sample_rate: int = 24000
  channels: int = 32
  strides: Tuple[int, ...] = (3, 4, 5, 8)
  embedding_dim: int = 128
  num_quantizers: int = 12
  codebook_size: int = 1024
  quantizer_dropout: bool = True
  codebook_decay: float = 0.99
  dead_code_threshold: float = 0.1
  kmeans_iterations: int = 10
  weight_norm: bool = True
  stft_channels: int = 32
  stft_frame_length: int = 1024
  stft_frame_step: int = 256
  wave_channels: int = 16
  wave_max_channels: int = 1024
  wave_scales: int = 3
  dtype: str = "float32"

  @property
  def hop_length(self) -> int:
    return math.prod(self.strides)

  @property
  def frame_rate(self) -> float:
    return self.sample_rate / self.hop_length

  def bitrate(self, num_levels: Optional[int] = None) -> float:
    """Bits per second when decoding with the first `num_levels` levels (default all)."""
    levels = self.num_quantizers if num_levels is None else num_levels
    return levels * math.log2(self.codebook_size) * self.frame_rate


class SoundStream(nn.Module):
  """The codec: [batch, samples] -> codes [batch, frames, levels] -> [batch, samples]."""
  config: SoundStreamConfig

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    self.encoder = seanet.SEANetEncoder(cfg.channels, tuple(cfg.strides), cfg.embedding_dim,
                                        weight_norm=cfg.weight_norm, dtype=dtype)
    self.quantizer = quantizers.ResidualVectorQuantizer(
        cfg.num_quantizers, cfg.codebook_size, cfg.embedding_dim, decay=cfg.codebook_decay,
        kmeans_iterations=cfg.kmeans_iterations, dead_code_threshold=cfg.dead_code_threshold,
        quantizer_dropout=cfg.quantizer_dropout)
    self.decoder = seanet.SEANetDecoder(cfg.channels, tuple(cfg.strides),
                                        weight_norm=cfg.weight_norm, dtype=dtype)

  def __call__(self, wave: jnp.ndarray, train: bool = False,
               dropout_rng: Optional[jax.Array] = None, num_levels: Optional[int] = None):
    """Encode, quantize, decode.

    Returns (reconstruction [batch, samples], codes int32 [batch, frames, levels],
    quantizer metrics). In training the codebooks update ('quantizer' mutable); with a
    dropout_rng and quantizer dropout, each example uses its own random number of levels.
    """
    embeddings = self.encoder(wave)
    quantized, codes, metrics = self.quantizer(embeddings, train=train,
                                               dropout_rng=dropout_rng, num_levels=num_levels)
    return self.decoder(quantized), codes, metrics

  def autoencode(self, wave: jnp.ndarray) -> jnp.ndarray:
    """[batch, samples] -> [batch, samples] through the encoder and decoder, unquantized
    (the quantizer warm-up: its codebooks are neither used nor initialised)."""
    return self.decoder(self.encoder(wave))

  def encode(self, wave: jnp.ndarray, num_levels: Optional[int] = None,
             streaming: bool = False) -> jnp.ndarray:
    """[batch, samples] -> codes int32 [batch, samples // hop, levels]."""
    return self.quantizer.encode(self.encoder(wave, streaming), num_levels)

  def decode(self, codes: jnp.ndarray, streaming: bool = False) -> jnp.ndarray:
    """codes [batch, frames, q] (any q <= num_quantizers) -> [batch, frames * hop]."""
    return self.decoder(self.quantizer.decode(codes), streaming)


class Discriminators(nn.Module):
  """STFT discriminator + multi-scale waveform discriminators, as one flat output list."""
  config: SoundStreamConfig

  @nn.compact
  def __call__(self, wave: jnp.ndarray) -> discriminators.DiscriminatorOutput:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    stft = discriminators.STFTDiscriminator(
        cfg.stft_channels, frame_length=cfg.stft_frame_length,
        frame_step=cfg.stft_frame_step, dtype=dtype, name="stft")(wave)
    waves = discriminators.MultiScaleWaveDiscriminator(
        cfg.wave_scales, cfg.wave_channels, cfg.wave_max_channels, dtype=dtype,
        name="wave")(wave)
    return stft + waves


class SoundStreamGAN(nn.Module):
  """Holds the generator and the discriminators under one variable tree."""
  config: SoundStreamConfig

  def setup(self):
    self.generator = SoundStream(self.config)
    self.discriminator = Discriminators(self.config)
    self.step = self.variable(GAN_STATE, "step", lambda: jnp.zeros((), jnp.int32))

  def __call__(self, wave: jnp.ndarray):
    """Initialisation pass through both networks."""
    reconstruction, _, _ = self.generator(wave)
    return self.discriminator(reconstruction)

  def generate(self, wave, train: bool = False, dropout_rng=None, num_levels=None):
    return self.generator(wave, train=train, dropout_rng=dropout_rng, num_levels=num_levels)

  def autoencode(self, wave):
    return self.generator.autoencode(wave)

  def discriminate(self, wave):
    return self.discriminator(wave)

  def count_step(self):
    """Counts generator loss passes ('gan_state'/'step': one per microbatch). Kept for the
    checkpoints' variable tree; the training phase reads the TrainState's step."""
    self.step.value = self.step.value + 1


def abstract_variables(config: SoundStreamConfig):
  """The variables of the codec `SoundStream(config)` (params and the codebooks' collection)
  as ShapeDtypeStructs (nothing allocated): what a codec bundle must match."""
  return jax.eval_shape(lambda: nn.meta.unbox(SoundStream(config).init(
      jax.random.key(0), jnp.zeros((1, config.hop_length * 4)))))


@gin.configurable
def soundstream_gan(config: SoundStreamConfig = gin.REQUIRED) -> SoundStreamGAN:
  """gin factory: `SoundStreamModel.module = @soundstream_gan()`."""
  return SoundStreamGAN(config)


@gin.configurable
class SoundStreamModel(models_lib.BaseModel):
  """GAN training of the codec on the T5X-style core."""

  def __init__(self, module: SoundStreamGAN,
               optimizer_def: Mapping[str, optax.GradientTransformation],
               lambda_adv: float = losses.LAMBDA_ADV, lambda_feat: float = losses.LAMBDA_FEAT,
               lambda_rec: float = losses.LAMBDA_REC, lambda_commit: float = 1.0,
               discriminator_warmup_steps: int = 0, quantizer_warmup_steps: int = 0,
               spectral_windows: Sequence[int] = losses.SPECTRAL_WINDOWS):
    """Args:
      module: the generator + discriminators.
      optimizer_def: {'generator': ..., 'discriminator': ...} optax transformations.
      lambda_adv, lambda_feat, lambda_rec: generator loss weights (the paper's defaults).
      lambda_commit: weight of the quantizer commitment loss.
      discriminator_warmup_steps: train the generator on reconstruction alone (and leave
        the discriminators still) for this many steps before the adversarial game starts.
      quantizer_warmup_steps: train encoder and decoder without the quantizer for this
        many steps first; the codebooks are then k-means-initialised on the trained
        encoder's embeddings. A short run needs it: codebooks fitted to a random encoder
        lag an encoder that is still moving fast, and the decoder learns to ignore codes
        that do not track its input (a static drone; see docs/codec.md).
      spectral_windows: STFT window sizes of the multi-scale reconstruction loss.
    """
    missing = {"generator", "discriminator"} - set(optimizer_def)
    if missing:
      raise ValueError(f"SoundStreamModel needs optimizers for {sorted(missing)}")
    super().__init__(module, optimizer_def)
    self.lambda_adv, self.lambda_feat, self.lambda_rec = lambda_adv, lambda_feat, lambda_rec
    self.lambda_commit = lambda_commit
    self.discriminator_warmup_steps = discriminator_warmup_steps
    self.quantizer_warmup_steps = quantizer_warmup_steps
    if quantizer_warmup_steps > discriminator_warmup_steps:
      raise ValueError(f"quantizer_warmup_steps {quantizer_warmup_steps} > "
                       f"discriminator_warmup_steps {discriminator_warmup_steps}: the "
                       "discriminators would judge an unquantized codec")
    # Whether the losses include the discriminators; the trainer sets it per training
    # phase (`for_phase`). A model used outside the trainer trains the full GAN.
    self.adversarial = True
    self.quantize = True
    self.spectral_windows = tuple(spectral_windows)

  @property
  def config(self) -> SoundStreamConfig:
    return self.module.config

  @property
  def optimizer_groups(self):
    # The discriminator moves first, against the current generator; then the generator.
    return {"discriminator": ("discriminator",), "generator": ("generator",)}

  @property
  def mutable_collections(self):
    return (quantizers.COLLECTION, GAN_STATE)

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    wave = jnp.zeros(input_shapes["audio"], jnp.float32)
    return self.module.init(rng, wave)

  # ---- losses ---------------------------------------------------------------------------

  PHASES = ("autoencoder", "warmup", "adversarial")

  def training_phase(self, state) -> str:
    """'autoencoder' (no quantizer) until `quantizer_warmup_steps` train steps are done,
    'warmup' (reconstruction only) until `discriminator_warmup_steps`, then 'adversarial'.
    Counts state.step (this host's copy), not the 'gan_state' counter: that counts
    microbatches, and with gradient accumulation ended the warm-up early."""
    step = int(np.asarray(state.step.addressable_data(0)))
    if step < self.quantizer_warmup_steps:
      return "autoencoder"
    return "adversarial" if step >= self.discriminator_warmup_steps else "warmup"

  def for_phase(self, phase: str) -> "SoundStreamModel":
    """This model with the quantizer out ('autoencoder'), the discriminators out
    ('warmup', 'autoencoder') or both in ('adversarial')."""
    if phase not in self.PHASES:
      raise ValueError(f"SoundStreamModel phase {phase!r}; expected one of {self.PHASES}")
    model = copy.copy(self)
    model.adversarial = phase == "adversarial"
    model.quantize = phase != "autoencoder"
    return model

  def loss_fn_with_mutables(self, params, flax_mutables, batch, dropout_rng,
                            group=models_lib.DEFAULT_GROUP):
    # During the warm-up (self.adversarial False, set per phase by the trainer) the
    # discriminators are not traced at all: the discriminator group's loss is 0 and the
    # generator's is reconstruction + commitment. `small` on a 2-core CPU: 2.35 s a
    # warm-up step, against 13.4 s with the discriminators computed and weighted by 0.
    wave = batch["audio"]
    variables = {"params": params, **flax_mutables}
    batch_size = jnp.asarray(wave.shape[0], jnp.float32)
    discriminate = lambda audio: self.module.apply(variables, audio,
                                                   method=SoundStreamGAN.discriminate)

    if group == "discriminator":
      loss = jnp.zeros((), jnp.float32)
      if self.adversarial:
        # The fakes the generator step makes: quantizer dropout on (each example at its own
        # bitrate), codebooks left alone. Full-bitrate fakes alone would leave the
        # discriminators judging low-bitrate decodings they were never trained on.
        reconstruction, _, _ = self.module.apply(variables, wave, dropout_rng=dropout_rng,
                                                 method=SoundStreamGAN.generate)
        fake = discriminate(jax.lax.stop_gradient(reconstruction))
        loss = losses.discriminator_loss(discriminate(wave), fake).astype(jnp.float32)
      return loss, ({"discriminator_loss_sum": loss * batch_size, "weight_sum": batch_size},
                    flax_mutables)

    if group != "generator":
      raise ValueError(f"unknown optimizer group {group!r}")
    if not self.quantize:   # the quantizer warm-up: encoder and decoder alone
      reconstruction = self.module.apply(variables, wave, method=SoundStreamGAN.autoencode)
      rec = losses.multi_scale_spectral_loss(wave, reconstruction, self.config.sample_rate,
                                             self.spectral_windows)
      return rec, ({"reconstruction_sum": rec * batch_size, "weight_sum": batch_size},
                   flax_mutables)
    (reconstruction, _, vq), updates = self.module.apply(
        variables, wave, train=True, dropout_rng=dropout_rng, method=SoundStreamGAN.generate,
        mutable=[quantizers.COLLECTION])
    adv = feat = jnp.zeros((), jnp.float32)
    if self.adversarial:
      adv, feat = losses.generator_adversarial_losses(discriminate(wave),
                                                      discriminate(reconstruction))
    rec = losses.multi_scale_spectral_loss(wave, reconstruction, self.config.sample_rate,
                                           self.spectral_windows)
    total, terms = losses.weighted_generator_loss(adv, feat, rec, self.lambda_adv,
                                                  self.lambda_feat, self.lambda_rec)
    loss = total + self.lambda_commit * vq["commitment_loss"]
    _, counted = self.module.apply(variables, method=SoundStreamGAN.count_step,
                                   mutable=[GAN_STATE])
    metrics = {f"{name}_sum": value * batch_size for name, value in terms.items()}
    metrics.update({"commitment_loss_sum": vq["commitment_loss"] * batch_size,
                    "codebook_perplexity_sum": vq["perplexity"] * batch_size,
                    "codebook_usage_sum": vq["usage"] * batch_size,
                    "weight_sum": batch_size})
    new_mutables = {**flax_mutables, quantizers.COLLECTION: updates[quantizers.COLLECTION],
                    GAN_STATE: counted[GAN_STATE]}
    return loss, (metrics, new_mutables)

  def loss_fn(self, params, batch, dropout_rng, group=models_lib.DEFAULT_GROUP):
    raise NotImplementedError("SoundStreamModel keeps codebooks in flax_mutables: use "
                              "loss_fn_with_mutables / eval_fn_with_mutables")

  def eval_fn_with_mutables(self, params, flax_mutables, batch):
    """Reconstruction quality at full bitrate: spectral loss and mel distance."""
    wave = batch["audio"]
    variables = {"params": params, **flax_mutables}
    reconstruction, _, vq = self.module.apply(variables, wave, method=SoundStreamGAN.generate)
    rec = losses.multi_scale_spectral_loss(wave, reconstruction, self.config.sample_rate,
                                           self.spectral_windows)
    batch_size = jnp.asarray(wave.shape[0], jnp.float32)
    return rec, {"reconstruction_sum": rec * batch_size,
                 "codebook_perplexity_sum": vq["perplexity"] * batch_size,
                 "weight_sum": batch_size}

  def summaries(self, params, flax_mutables, batch):
    """Input and decoded audio (full and lowest bitrate) with their log-mel spectrograms."""
    waves, mels = jax.device_get(self._summary_media({"params": params, **flax_mutables},
                                                     jnp.asarray(batch["audio"])))
    sr = self.config.sample_rate
    out = {"audio": {}, "images": {}}
    for i in range(waves["input"].shape[0]):
      for name, audio in waves.items():
        key = f"example_{i}/{name}"
        out["audio"][key] = (audio[i], sr)
        out["images"][f"{key}_log_mel"] = mels[name][i]
    return out

  @functools.partial(jax.jit, static_argnums=0)
  def _summary_media(self, variables, wave):
    """One program for every summary (a TensorBoard write compiles nothing else).

    Returns ({'input', 'decoded_full', 'decoded_1_level'}: audio [B, samples], decoded
    clipped to [-1, 1]; the same keys: log-mel [B, mels, frames], low mels at the bottom).
    """
    generate = lambda levels: self.module.apply(variables, wave, num_levels=levels,
                                                method=SoundStreamGAN.generate)[0]
    waves = {"input": wave, "decoded_full": generate(None), "decoded_1_level": generate(1)}
    mels = {name: features.log_mel_spectrogram(audio, self.config.sample_rate, 512, 128,
                                               center=True).transpose(0, 2, 1)[:, ::-1]
            for name, audio in waves.items()}
    waves = {name: audio if name == "input" else jnp.clip(audio, -1, 1)
             for name, audio in waves.items()}
    return waves, mels

  # ---- inference ------------------------------------------------------------------------

  def predict_batch(self, params, batch, rng=None, flax_mutables=None, num_levels=None,
                    **unused):
    """Reconstructions [batch, samples] through `num_levels` levels (default all)."""
    if flax_mutables is None:
      raise ValueError("SoundStreamModel.predict_batch needs flax_mutables (the codebooks)")
    variables = {"params": params, **flax_mutables}
    return self.module.apply(variables, batch["audio"], num_levels=num_levels,
                             method=SoundStreamGAN.generate)[0]

  def score_batch(self, params, batch, flax_mutables=None):
    """Negative per-example spectral reconstruction loss, [batch]."""
    reconstruction = self.predict_batch(params, batch, flax_mutables=flax_mutables)
    per_example = jax.vmap(lambda w, r: losses.multi_scale_spectral_loss(
        w[None], r[None], self.config.sample_rate, self.spectral_windows))
    return -per_example(batch["audio"], reconstruction)
