"""SoundStream's losses (Zeghidour et al. 2021, Sec. 3.5).

Discriminator outputs come as a flat list of (logits, feature maps) pairs, one per
sub-discriminator (see `discriminators`); K = len(list). Every term averages over the
sub-discriminators and over the logits / feature elements, so it does not depend on batch
size, clip length or map shapes.

- Discriminator:   1/K sum_k mean_t [max(0, 1 - D_k,t(x)) + max(0, 1 + D_k,t(G(x)))]
- Generator (adv): 1/K sum_k mean_t max(0, 1 - D_k,t(G(x)))
- Feature matching: 1/(K L) sum_k,l mean|D_k^l(x) - D_k^l(G(x))| / mean|D_k^l(x)|: the L1
  of the paper, normalised per map by the real map's mean magnitude (EnCodec), so layers
  of every scale weigh alike. Real features get no gradient.
- Reconstruction: sum over window sizes s = 2^6 .. 2^11 of the mel spectrograms (64 bands,
  hop s/4) compared as mean_t ||S_t(x) - S_t(G(x))||_1 + alpha_s mean_t ||log S_t(x) -
  log S_t(G(x))||_2, alpha_s = sqrt(s / 2). Norms are per frame over the mel bands, as in
  the paper's equation; averaged (not summed) over frames and batch.

Total generator loss = LAMBDA_ADV * adv + LAMBDA_FEAT * feat + LAMBDA_REC * rec, the
paper's weights.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.audio import features

LAMBDA_ADV = 1.0
LAMBDA_FEAT = 100.0
LAMBDA_REC = 1.0
SPECTRAL_WINDOWS = tuple(2 ** i for i in range(6, 12))  # 64 .. 2048 samples
SPECTRAL_NUM_MELS = 64

DiscriminatorOutput = Sequence[Tuple[jnp.ndarray, Sequence[jnp.ndarray]]]


def _check_same_count(real: Sequence, fake: Sequence, what: str):
  if len(real) != len(fake) or not real:
    raise ValueError(f"{what}: {len(real)} real vs {len(fake)} fake sub-discriminator outputs")


def discriminator_hinge_loss(real_logits: Sequence[jnp.ndarray],
                             fake_logits: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Hinge loss of the discriminators; zero once real logits >= 1 and fake <= -1.

  Args:
    real_logits, fake_logits: one array per sub-discriminator (any shapes, paired).
  Returns:
    scalar float32.
  """
  _check_same_count(real_logits, fake_logits, "discriminator_hinge_loss")
  terms = [jnp.mean(jax.nn.relu(1.0 - r.astype(jnp.float32)))
           + jnp.mean(jax.nn.relu(1.0 + f.astype(jnp.float32)))
           for r, f in zip(real_logits, fake_logits)]
  return sum(terms) / len(terms)


def generator_hinge_loss(fake_logits: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Hinge adversarial loss of the generator: mean max(0, 1 - D(G(x))); scalar."""
  if not fake_logits:
    raise ValueError("generator_hinge_loss: no sub-discriminator outputs")
  terms = [jnp.mean(jax.nn.relu(1.0 - f.astype(jnp.float32))) for f in fake_logits]
  return sum(terms) / len(terms)


def feature_matching_loss(real_features: Sequence[Sequence[jnp.ndarray]],
                          fake_features: Sequence[Sequence[jnp.ndarray]],
                          eps: float = 1e-8) -> jnp.ndarray:
  """Relative L1 between the discriminators' feature maps of real and decoded audio.

  Args:
    real_features, fake_features: per sub-discriminator, its list of feature maps.
  Returns:
    scalar float32, averaged over every (sub-discriminator, layer) pair.
  """
  _check_same_count(real_features, fake_features, "feature_matching_loss")
  terms = []
  for real_maps, fake_maps in zip(real_features, fake_features):
    _check_same_count(real_maps, fake_maps, "feature_matching_loss (layers)")
    for real, fake in zip(real_maps, fake_maps):
      real = jax.lax.stop_gradient(real.astype(jnp.float32))
      terms.append(jnp.mean(jnp.abs(real - fake.astype(jnp.float32)))
                   / (jnp.mean(jnp.abs(real)) + eps))
  return sum(terms) / len(terms)


def _safe_norm(x: jnp.ndarray, axis: int) -> jnp.ndarray:
  """L2 norm that is exactly 0 with a zero (not NaN) gradient at x = 0."""
  squared = jnp.sum(jnp.square(x), axis=axis)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def multi_scale_spectral_loss(wave: jnp.ndarray, reconstruction: jnp.ndarray,
                              sample_rate: int,
                              window_sizes: Sequence[int] = SPECTRAL_WINDOWS,
                              num_mels: int = SPECTRAL_NUM_MELS,
                              log_eps: float = 1e-5) -> jnp.ndarray:
  """SoundStream's multi-scale mel reconstruction loss (see the module docstring).

  Frames are centred and zero-padded, so clips shorter than the largest window work.

  Args:
    wave, reconstruction: [batch, samples] (or [batch, samples, 1]), same shape.
    sample_rate: Hz, for the mel scale.
    window_sizes: STFT window lengths s (hop s / 4, FFT size s).
    num_mels: mel bands per scale.
    log_eps: added to the mel magnitudes before the log.
  Returns:
    scalar float32.
  """
  if wave.shape != reconstruction.shape:
    raise ValueError(f"multi_scale_spectral_loss: wave {wave.shape} vs reconstruction "
                     f"{reconstruction.shape}")
  if wave.ndim == 3:
    wave, reconstruction = wave[..., 0], reconstruction[..., 0]
  total = jnp.zeros((), jnp.float32)
  for s in window_sizes:
    mel = lambda w: features.mel_spectrogram(w, sample_rate, s, s // 4, s, num_mels,
                                             center=True)
    real, fake = mel(wave), mel(reconstruction)
    l1 = jnp.mean(jnp.sum(jnp.abs(real - fake), axis=-1))
    l2_log = jnp.mean(_safe_norm(jnp.log(real + log_eps) - jnp.log(fake + log_eps), -1))
    total = total + l1 + float(np.sqrt(s / 2)) * l2_log
  return total


def generator_adversarial_losses(real_outputs: DiscriminatorOutput,
                                 fake_outputs: DiscriminatorOutput
                                 ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """(hinge adversarial loss, feature-matching loss) of the generator, float32 scalars."""
  adv = generator_hinge_loss([logits for logits, _ in fake_outputs])
  feat = feature_matching_loss([f for _, f in real_outputs], [f for _, f in fake_outputs])
  return adv.astype(jnp.float32), feat.astype(jnp.float32)


def generator_loss(real_outputs: DiscriminatorOutput, fake_outputs: DiscriminatorOutput,
                   wave: jnp.ndarray, reconstruction: jnp.ndarray, sample_rate: int,
                   lambda_adv: float = LAMBDA_ADV, lambda_feat: float = LAMBDA_FEAT,
                   lambda_rec: float = LAMBDA_REC,
                   window_sizes: Optional[Sequence[int]] = None
                   ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """The codec's total loss (quantizer losses excluded) and its terms.

  Args:
    real_outputs, fake_outputs: every sub-discriminator's (logits, features) on the real
      and on the decoded audio, in the same order.
    wave, reconstruction: [batch, samples].
  Returns:
    (scalar total, {'adversarial', 'feature_matching', 'reconstruction'} scalars).
  """
  adv, feat = generator_adversarial_losses(real_outputs, fake_outputs)
  rec = multi_scale_spectral_loss(wave, reconstruction, sample_rate,
                                  window_sizes or SPECTRAL_WINDOWS)
  return weighted_generator_loss(adv, feat, rec, lambda_adv, lambda_feat, lambda_rec)


def weighted_generator_loss(adversarial: jnp.ndarray, feature_matching: jnp.ndarray,
                            reconstruction: jnp.ndarray, lambda_adv: float = LAMBDA_ADV,
                            lambda_feat: float = LAMBDA_FEAT, lambda_rec: float = LAMBDA_REC
                            ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """(scalar total, the terms by name) from the three generator terms."""
  total = lambda_adv * adversarial + lambda_feat * feature_matching + lambda_rec * reconstruction
  return total, {"adversarial": adversarial, "feature_matching": feature_matching,
                 "reconstruction": reconstruction}


def discriminator_loss(real_outputs: DiscriminatorOutput,
                       fake_outputs: DiscriminatorOutput) -> jnp.ndarray:
  """Hinge loss of every sub-discriminator (pass fake outputs of stop_gradient(G(x)))."""
  return discriminator_hinge_loss([logits for logits, _ in real_outputs],
                                  [logits for logits, _ in fake_outputs])
