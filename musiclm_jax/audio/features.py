"""Spectral features in jnp: STFT, magnitudes, log-mel and semitone spectrograms.

They run inside jitted model code (the codec's spectral loss, the STFT discriminator, the
MuLan audio tower), so they are pure functions of static-shaped arrays: framing is a gather
with indices known at trace time, the FFT is `jnp.fft.rfft`. The mel matrix (the one
`tf.signal.linear_to_mel_weight_matrix` makes: HTK mel scale, triangles on the mel axis, DC
bin zeroed) is computed once per configuration in NumPy on the host and cached; the jitted
code sees it as a constant.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax.numpy as jnp
import numpy as np


def _default_fft_length(frame_length: int) -> int:
  return 1 << (frame_length - 1).bit_length()


def hann_window(length: int) -> np.ndarray:
  """Periodic Hann window (as `tf.signal.hann_window`), float32 [length]."""
  n = np.arange(length)
  return (0.5 - 0.5 * np.cos(2 * np.pi * n / length)).astype(np.float32)


def num_frames(num_samples: int, frame_length: int, frame_step: int,
               center: bool = False) -> int:
  """How many frames `stft` makes of num_samples samples."""
  if center:
    num_samples += 2 * (frame_length // 2)
  return max(0, 1 + (num_samples - frame_length) // frame_step)


def stft(wave: jnp.ndarray, frame_length: int, frame_step: int,
         fft_length: Optional[int] = None, center: bool = False) -> jnp.ndarray:
  """Short-time Fourier transform with a periodic Hann window.

  Frame f covers samples [f * frame_step, f * frame_step + frame_length) of the (padded)
  wave. Without `center`, frames are not padded (tf.signal.stft with pad_end=False): only
  whole frames, 1 + (samples - frame_length) // frame_step of them. With `center`, the wave
  is first zero-padded by frame_length // 2 on both sides (frame f centred on sample
  f * frame_step, as librosa/torch with center=True, but zero rather than reflect padding,
  so any length works).

  Args:
    wave: [batch, samples] real.
    frame_length: window length in samples.
    frame_step: hop in samples.
    fft_length: FFT size >= frame_length (zero-padded); default: next power of two.
  Returns:
    complex64 [batch, frames, fft_length // 2 + 1].
  """
  fft_length = fft_length or _default_fft_length(frame_length)
  if fft_length < frame_length:
    raise ValueError(f"fft_length {fft_length} < frame_length {frame_length}")
  wave = jnp.asarray(wave, jnp.float32)
  if center:
    half = frame_length // 2
    wave = jnp.pad(wave, ((0, 0), (half, half)))
  frames = num_frames(wave.shape[-1], frame_length, frame_step)
  if frames == 0:
    raise ValueError(f"stft: {wave.shape[-1]} samples are fewer than one frame of "
                     f"{frame_length} (use center=True or a longer wave)")
  index = (np.arange(frames)[:, None] * frame_step + np.arange(frame_length)[None, :])
  framed = wave[:, index] * hann_window(frame_length)
  return jnp.fft.rfft(framed, n=fft_length, axis=-1)


def magnitude(spectrum: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """|spectrum|, with a finite gradient at 0 (the power is floored at `eps` first)."""
  power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
  return jnp.sqrt(jnp.maximum(power, eps))


def hertz_to_mel(hertz):
  """HTK mel scale: 1127 ln(1 + f / 700)."""
  return 1127.0 * np.log1p(np.asarray(hertz, np.float64) / 700.0)


@functools.lru_cache(maxsize=64)
def mel_filterbank(num_mels: int, fft_length: int, sample_rate: int, fmin: float = 0.0,
                   fmax: Optional[float] = None) -> np.ndarray:
  """Mel weight matrix float32 [fft_length // 2 + 1, num_mels] (read-only, cached).

  `spectrogram @ mel_filterbank(...)` maps linear bins to mel bands: triangles evenly
  spaced on the HTK mel scale between fmin and fmax, peak 1, no area normalisation, the DC
  bin left out. The same matrix as `tf.signal.linear_to_mel_weight_matrix` (tested), in
  NumPy, so that computing features never imports TensorFlow.
  """
  fmax = sample_rate / 2 if fmax is None else fmax
  if not 0 <= fmin < fmax <= sample_rate / 2:
    raise ValueError(f"mel_filterbank: need 0 <= fmin ({fmin}) < fmax ({fmax}) <= "
                     f"sample_rate / 2 ({sample_rate / 2})")
  bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2, fft_length // 2 + 1))[:, None]
  edges = np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), num_mels + 2)
  lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
  rising = (bins_mel - lower) / (center - lower)
  falling = (upper - bins_mel) / (upper - center)
  matrix = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
  matrix[0] = 0.0   # the DC bin carries no pitch
  matrix.setflags(write=False)
  return matrix


def mel_spectrogram(wave: jnp.ndarray, sample_rate: int, frame_length: int = 1024,
                    frame_step: int = 256, fft_length: Optional[int] = None,
                    num_mels: int = 64, fmin: float = 0.0, fmax: Optional[float] = None,
                    center: bool = False) -> jnp.ndarray:
  """Mel-scaled STFT magnitudes (not power): [batch, samples] -> [batch, frames, num_mels]."""
  fft_length = fft_length or _default_fft_length(frame_length)
  spectrum = magnitude(stft(wave, frame_length, frame_step, fft_length, center))
  return spectrum @ mel_filterbank(num_mels, fft_length, sample_rate, fmin, fmax)


def log_mel_spectrogram(wave: jnp.ndarray, sample_rate: int, frame_length: int = 1024,
                        frame_step: int = 256, fft_length: Optional[int] = None,
                        num_mels: int = 64, fmin: float = 0.0, fmax: Optional[float] = None,
                        center: bool = False, eps: float = 1e-5) -> jnp.ndarray:
  """log(mel magnitudes + eps): [batch, samples] -> [batch, frames, num_mels]."""
  return jnp.log(mel_spectrogram(wave, sample_rate, frame_length, frame_step, fft_length,
                                 num_mels, fmin, fmax, center) + eps)


@functools.lru_cache(maxsize=16)
def semitone_filterbank(num_bins: int, fft_length: int, sample_rate: int,
                        fmin: float) -> np.ndarray:
  """Semitone weight matrix float32 [fft_length // 2 + 1, num_bins] (read-only, cached).

  Band k is a triangle on the log-frequency axis centred on fmin * 2^(k / 12) with its
  feet on the neighbouring semitones (a constant-Q approximation from the STFT, as a CQT
  with 12 bins per octave). A band too narrow to hold an FFT bin's centre takes its nearest
  bin, so no band is silent.
  """
  if not fmin > 0 or num_bins < 1:
    raise ValueError(f"semitone_filterbank: need fmin > 0 Hz and num_bins >= 1, got fmin "
                     f"{fmin}, num_bins {num_bins}")
  top = fmin * 2.0 ** ((num_bins - 1) / 12)
  if top >= sample_rate / 2:
    raise ValueError(f"semitone_filterbank: {num_bins} semitones from {fmin} Hz reach "
                     f"{top:.0f} Hz, past the Nyquist frequency {sample_rate / 2}")
  hertz = np.linspace(0.0, sample_rate / 2, fft_length // 2 + 1)
  semitones = 12.0 * np.log2(np.maximum(hertz, 1e-3) / fmin)[:, None]
  centre = np.arange(num_bins)[None, :]
  matrix = np.maximum(0.0, 1.0 - np.abs(semitones - centre)).astype(np.float32)
  for band in np.flatnonzero(matrix.sum(axis=0) == 0):
    matrix[np.argmin(np.abs(semitones[:, 0] - band)), band] = 1.0
  matrix.setflags(write=False)
  return matrix


def log_semitone_spectrogram(wave: jnp.ndarray, sample_rate: int, frame_length: int,
                             frame_step: int, num_bins: int = 84, fmin: float = 65.41,
                             center: bool = True, eps: float = 1e-5) -> jnp.ndarray:
  """log(semitone-band magnitudes + eps): [batch, samples] -> [batch, frames, num_bins].

  Defaults: 7 octaves from C2. Resolving a semitone at fmin needs frame_length well above
  sample_rate / (fmin * (2^(1/12) - 1)) samples (4096 at 16 kHz from C2).
  """
  fft_length = _default_fft_length(frame_length)
  spectrum = magnitude(stft(wave, frame_length, frame_step, fft_length, center))
  return jnp.log(spectrum @ semitone_filterbank(num_bins, fft_length, sample_rate, fmin)
                 + eps)
