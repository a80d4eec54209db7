"""Reading, checking and writing audio files.

Every reader in the project goes through `load_audio`: any format libsndfile reads (WAV,
FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...), any sample rate (resampled with soxr's
high-quality resampler), any channel count (averaged to mono). Files that cannot be used
raise `AudioError` with the file and a short `reason` from `SKIP_REASONS`, which jobs count
and report instead of crashing (`SkipCounter`).
"""

from __future__ import annotations

import collections
import os
from typing import Optional, Tuple

import numpy as np
import soundfile as sf
import soxr

from musiclm_jax import atomic

# Why a file was skipped; jobs report counts per reason.
SKIP_REASONS = ("unreadable", "empty", "non_finite", "silent", "too_short",
                # dataset builders: a listed clip with no file, or a file of the wrong length
                "missing", "length_mismatch")

# Peak below this (about -80 dBFS) counts as digital silence.
SILENCE_PEAK = 1e-4


class AudioError(ValueError):
  """A file that cannot be used, with the reason (one of SKIP_REASONS)."""

  def __init__(self, path: str, reason: str, detail: str = ""):
    assert reason in SKIP_REASONS, reason
    self.path, self.reason, self.detail = str(path), reason, detail
    super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def read_audio(path: str) -> Tuple[np.ndarray, int]:
  """The file's samples as float32 [time, channels] and its sample rate, as stored.

  The format is detected from the content, not the extension.
  """
  try:
    wave, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
  except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as e:
    raise AudioError(path, "unreadable", str(e).strip() or type(e).__name__) from e
  return wave, int(sample_rate)


def to_mono(wave: np.ndarray) -> np.ndarray:
  """[time, channels] -> [time] by averaging the channels (an equal-gain down-mix)."""
  return wave.mean(axis=1) if wave.ndim == 2 else wave


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """Band-limited resampling (soxr 'HQ'); [time] or [time, channels], float32."""
  if from_rate == to_rate:
    return wave.astype(np.float32, copy=False)
  return soxr.resample(wave, from_rate, to_rate, quality="HQ").astype(np.float32)


def check_audio(wave: np.ndarray, sample_rate: int, path: str = "<array>",
                min_seconds: float = 0.0) -> None:
  """Raises AudioError if `wave` is empty, non-finite, silent or shorter than min_seconds."""
  if wave.size == 0:
    raise AudioError(path, "empty")
  if not np.all(np.isfinite(wave)):
    raise AudioError(path, "non_finite", f"{int(np.sum(~np.isfinite(wave)))} samples")
  seconds = wave.shape[0] / sample_rate
  if seconds < min_seconds:
    raise AudioError(path, "too_short", f"{seconds:.2f} s < {min_seconds:.2f} s")
  if float(np.max(np.abs(wave))) < SILENCE_PEAK:
    raise AudioError(path, "silent")


def load_audio(path: str, sample_rate: Optional[int] = None, mono: bool = True,
               min_seconds: float = 0.0) -> np.ndarray:
  """Reads, checks, down-mixes and resamples a file.

  Args:
    path: audio file in any format libsndfile reads.
    sample_rate: output rate (None: as stored).
    mono: average the channels ([time]); otherwise [time, channels].
    min_seconds: shorter files raise AudioError('too_short').
  Returns:
    float32 samples in [-1, 1] (values beyond are clipped).
  """
  wave, rate = read_audio(path)
  check_audio(wave, rate, path, min_seconds)
  if mono:
    wave = to_mono(wave)
  if sample_rate is not None:
    wave = resample(wave, rate, sample_rate)
  return np.clip(wave, -1.0, 1.0)


def save_audio(path: str, wave: np.ndarray, sample_rate: int, subtype: str = "PCM_16"
               ) -> None:
  """Writes [time] or [time, channels] float audio atomically (temporary file + rename).

  The format follows the extension (.wav, .flac, .ogg); a crash never leaves a partial file
  under the final name.
  """
  wave = np.asarray(wave, np.float32)
  if not np.all(np.isfinite(wave)):
    raise ValueError(f"refusing to write non-finite audio to {path}")
  ext = os.path.splitext(path)[1].lower()
  fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(ext)
  if fmt is None:
    raise ValueError(f"cannot write {path}: extension {ext!r} is not .wav, .flac or .ogg")
  if fmt == "OGG":
    subtype = "VORBIS"
  with atomic.atomic_file(path, suffix=ext) as tmp:
    sf.write(tmp, np.clip(wave, -1.0, 1.0), sample_rate, subtype=subtype, format=fmt)


class SkipCounter:
  """Counts files skipped per reason and keeps a few examples for the report."""

  def __init__(self, examples_per_reason: int = 3):
    self.counts = collections.Counter()
    self.examples = collections.defaultdict(list)
    self._keep = examples_per_reason

  def add(self, error: AudioError) -> None:
    self.counts[error.reason] += 1
    if len(self.examples[error.reason]) < self._keep:
      self.examples[error.reason].append(str(error))

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def summary(self) -> str:
    if not self.counts:
      return "no files skipped"
    parts = [f"{reason}: {count}" for reason, count in sorted(self.counts.items())]
    return f"skipped {self.total} files ({', '.join(parts)})"
