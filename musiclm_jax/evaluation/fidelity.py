"""Reconstruction fidelity: how much of a clip a codec (or any resynthesis) keeps.

Measures that fail in different ways, so that no single one can be gamed by a blur:

  si_sdr_db              the waveform (Le Roux et al. 2019): scale-invariant SDR, dB. A
                         resynthesis with the right spectrum but unrelated phase scores far
                         below 0; a band-limited but faithful copy scores well.
  chroma_cosine          pitch over time: mean per-frame cosine between the 12-bin chroma of
                         the input and of the output, over the input's sounding frames.
                         Read it beside three baselines on the same frames, none of
                         which knows when a note sounds: `chroma_flat` (all pitch classes
                         equal), `chroma_shuffled` (the input's own chroma frames shuffled
                         in time: the right pitch classes at the wrong times) and
                         `chroma_static` (the input's time-averaged chroma: what a static
                         drone with the clip's pitch content scores, the strongest of the
                         three). An output that keeps the notes scores well above all.
  onset_f1               rhythm: F-measure of the output's detected onsets against the
                         input's (librosa's onset detector, mir_eval's matching within 50 ms).
  stft_distance          multi-resolution STFT distance (Yamamoto et al. 2020): spectral
                         convergence + mean |log magnitude difference|, averaged over FFT
                         sizes 512, 1024 and 2048 (hop 1/4). Linear-frequency, so it sees
                         harmonics a mel scale merges.
  mel_distance           mean |log-mel difference| (64 bands, window 1024, hop 256): the
                         spectral envelope. Kept for comparison; a blur passes it.
  lag_samples            the shift (within +-50 ms) that best aligns the output with the
                         input: a wandering lag is a waveform that is not the input's.

`fidelity(reference, estimate, sample_rate)` returns all of them for one clip;
`mean_fidelity` averages a list of such dicts. Everything is NumPy on the host (librosa,
mir_eval): these run in benchmarks, the pipeline's report and tests, never in a jitted step.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from musiclm_jax.audio import features

CHROMA_WINDOW_SECONDS = 0.2     # ~5 Hz bins at 16-24 kHz: semitones resolved from ~90 Hz
SOUNDING_BELOW_PEAK_DB = 40.0   # chroma frames quieter than this under the loudest are skipped
ONSET_WINDOW_SECONDS = 0.05     # mir_eval's default tolerance
STFT_SIZES = (512, 1024, 2048)
MAX_LAG_SECONDS = 0.05
SHUFFLE_SEED = 0


def _as_float64(wave: np.ndarray, name: str) -> np.ndarray:
  wave = np.asarray(wave, np.float64)
  if wave.ndim != 1 or wave.shape[0] == 0:
    raise ValueError(f"fidelity: {name} must be a non-empty mono [samples] array, got shape "
                     f"{wave.shape}")
  return wave


def _paired(reference: np.ndarray, estimate: np.ndarray):
  reference = _as_float64(reference, "reference")
  estimate = _as_float64(estimate, "estimate")
  if reference.shape != estimate.shape:
    raise ValueError(f"fidelity: reference {reference.shape} and estimate {estimate.shape} "
                     f"differ in length (cut or pad the estimate first)")
  return reference, estimate


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
  """Scale-invariant SDR in dB of estimate [samples] against reference [samples]."""
  x, y = _paired(reference, estimate)
  x, y = x - x.mean(), y - y.mean()
  target = (y @ x) / max(x @ x, 1e-20) * x
  noise = y - target
  return float(10 * np.log10(max(target @ target, 1e-20) / max(noise @ noise, 1e-20)))


def _chroma_setup(sample_rate: int):
  n_fft = 1 << int(round(np.log2(CHROMA_WINDOW_SECONDS * sample_rate)))
  return n_fft, n_fft // 8


def chroma(wave: np.ndarray, sample_rate: int) -> np.ndarray:
  """Chroma [12, frames] (librosa's STFT chroma, each frame scaled to max 1)."""
  import librosa  # pylint: disable=g-import-not-at-top  (heavy; host-side evaluation only)
  n_fft, hop = _chroma_setup(sample_rate)
  return librosa.feature.chroma_stft(y=np.asarray(wave, np.float32), sr=sample_rate,
                                     n_fft=n_fft, hop_length=hop)


def _sounding_frames(wave: np.ndarray, sample_rate: int, frames: int) -> np.ndarray:
  """Bool [frames]: the chroma frames whose RMS is within SOUNDING_BELOW_PEAK_DB of the max."""
  import librosa  # pylint: disable=g-import-not-at-top
  n_fft, hop = _chroma_setup(sample_rate)
  rms = librosa.feature.rms(y=np.asarray(wave, np.float32), frame_length=n_fft,
                            hop_length=hop)[0][:frames]
  level = 20 * np.log10(np.maximum(rms, 1e-10))
  return level > level.max() - SOUNDING_BELOW_PEAK_DB


def _frame_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
  return np.sum(a * b, axis=0) / np.maximum(norm, 1e-12)


def chroma_scores(reference: np.ndarray, estimate: np.ndarray,
                  sample_rate: int) -> Dict[str, float]:
  """{'chroma_cosine', 'chroma_flat', 'chroma_shuffled', 'chroma_static'} over the
  reference's sounding frames (see the module docstring)."""
  reference, estimate = _paired(reference, estimate)
  ref, est = chroma(reference, sample_rate), chroma(estimate, sample_rate)
  sounding = _sounding_frames(reference, sample_rate, ref.shape[1])
  ref, est = ref[:, sounding], est[:, sounding]
  shuffled = ref[:, np.random.default_rng(SHUFFLE_SEED).permutation(ref.shape[1])]
  return {"chroma_cosine": float(np.mean(_frame_cosine(ref, est))),
          "chroma_flat": float(np.mean(_frame_cosine(ref, np.ones_like(ref)))),
          "chroma_shuffled": float(np.mean(_frame_cosine(ref, shuffled))),
          "chroma_static": float(np.mean(_frame_cosine(
              ref, np.repeat(ref.mean(axis=1, keepdims=True), ref.shape[1], axis=1))))}


def onsets(wave: np.ndarray, sample_rate: int) -> np.ndarray:
  """Onset times in seconds (librosa's spectral-flux onset detector)."""
  import librosa  # pylint: disable=g-import-not-at-top
  return librosa.onset.onset_detect(y=np.asarray(wave, np.float32), sr=sample_rate,
                                    units="time")


def onset_f1(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
  """F-measure of the estimate's onsets against the reference's (50 ms); NaN when the
  reference has none."""
  import mir_eval  # pylint: disable=g-import-not-at-top
  reference, estimate = _paired(reference, estimate)
  ref, est = onsets(reference, sample_rate), onsets(estimate, sample_rate)
  if ref.size == 0:
    return float("nan")
  return float(mir_eval.onset.f_measure(ref, est, window=ONSET_WINDOW_SECONDS)[0])


def stft_distance(reference: np.ndarray, estimate: np.ndarray,
                  fft_sizes: Sequence[int] = STFT_SIZES) -> float:
  """Multi-resolution STFT distance (spectral convergence + log-magnitude L1), mean over
  the FFT sizes; 0 for identical audio."""
  reference, estimate = _paired(reference, estimate)
  total = 0.0
  for n in fft_sizes:
    if reference.shape[0] < n:
      raise ValueError(f"stft_distance: {reference.shape[0]} samples are fewer than one "
                       f"FFT of {n}")
    mag = lambda w: np.abs(np.asarray(features.stft(w[None].astype(np.float32), n, n // 4,
                                                    n)[0], np.complex128))
    x, y = mag(reference), mag(estimate)
    convergence = np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-12)
    log_l1 = np.mean(np.abs(np.log(x + 1e-7) - np.log(y + 1e-7)))
    total += convergence + log_l1
  return float(total / len(fft_sizes))


def mel_distance(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
  """Mean |log-mel difference| (64 bands, window and FFT 1024, hop 256, floor 1e-5)."""
  reference, estimate = _paired(reference, estimate)
  mel = lambda w: np.asarray(features.log_mel_spectrogram(
      w[None].astype(np.float32), sample_rate, frame_length=1024, frame_step=256,
      fft_length=1024, num_mels=64))
  return float(np.mean(np.abs(mel(reference) - mel(estimate))))


def best_lag(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> int:
  """Samples by which estimate lags reference (+: later), within +-MAX_LAG_SECONDS."""
  reference, estimate = _paired(reference, estimate)
  n = 1 << (2 * reference.shape[0] - 1).bit_length()
  xc = np.fft.irfft(np.fft.rfft(estimate, n) * np.conj(np.fft.rfft(reference, n)), n)
  m = int(MAX_LAG_SECONDS * sample_rate)
  lags = np.concatenate([np.arange(0, m + 1), np.arange(-m, 0)])
  return int(lags[np.argmax(np.concatenate([xc[:m + 1], xc[-m:]]))])


def fidelity(reference: np.ndarray, estimate: np.ndarray,
             sample_rate: int) -> Dict[str, float]:
  """Every measure of the module docstring for one clip.

  Args:
    reference: the input, mono float [samples].
    estimate: its resynthesis, the same length (clip it to [-1, 1] first if a writer would).
    sample_rate: Hz of both.
  Returns:
    {'si_sdr_db', 'chroma_cosine', 'chroma_flat', 'chroma_shuffled', 'chroma_static',
     'onset_f1', 'stft_distance', 'mel_distance', 'lag_samples'}.
  """
  return {"si_sdr_db": si_sdr(reference, estimate),
          **chroma_scores(reference, estimate, sample_rate),
          "onset_f1": onset_f1(reference, estimate, sample_rate),
          "stft_distance": stft_distance(reference, estimate),
          "mel_distance": mel_distance(reference, estimate, sample_rate),
          "lag_samples": best_lag(reference, estimate, sample_rate)}


def mean_fidelity(per_clip: Sequence[Dict[str, float]]) -> Dict[str, float]:
  """The mean of each measure over clips (NaN onset scores of onset-free clips skipped)."""
  if not per_clip:
    raise ValueError("mean_fidelity: no clips")
  out = {}
  for name in per_clip[0]:
    values = np.array([clip[name] for clip in per_clip], np.float64)
    out[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
  return out
