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
                # not plausible music audio: see check_audio
                "bad_rate", "constant", "out_of_range",
                # dataset builders: a listed clip with no file, or a file of the wrong length
                "missing", "length_mismatch")

# Peak below this (about -80 dBFS) counts as digital silence.
SILENCE_PEAK = 1e-4
# Sample rates of real recordings: telephone speech (8 kHz) needs no less than 4 kHz, and
# no studio format exceeds 384 kHz. A header outside says the file is damaged (a "1 Hz"
# header turns a second of samples into hours of audio).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 384000
# Float files may peak a little above full scale (hot masters, resampling overshoot): those
# peaks are clipped to [-1, 1]. A peak beyond this is not audio in [-1, 1] at all (raw
# integers stored as float, or a broken scale): rejected, not clipped to a square wave.
MAX_FLOAT_PEAK = 4.0


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
  """Raises AudioError unless `wave` ([time] or [time, channels]) is plausible music audio:
  a sample rate of real recordings, samples present, finite and within MAX_FLOAT_PEAK, at
  least min_seconds, not silent and not a constant (DC) signal."""
  if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
    raise AudioError(path, "bad_rate", f"{sample_rate} Hz is outside {MIN_SAMPLE_RATE}.."
                     f"{MAX_SAMPLE_RATE} Hz")
  if wave.size == 0:
    raise AudioError(path, "empty")
  if not np.all(np.isfinite(wave)):
    raise AudioError(path, "non_finite", f"{int(np.sum(~np.isfinite(wave)))} samples")
  seconds = wave.shape[0] / sample_rate
  if seconds < min_seconds:
    raise AudioError(path, "too_short", f"{seconds:.2f} s < {min_seconds:.2f} s")
  peak = float(np.max(np.abs(wave)))
  if peak > MAX_FLOAT_PEAK:
    raise AudioError(path, "out_of_range", f"peak {peak:.3g}, more than {MAX_FLOAT_PEAK} "
                     "times full scale")
  if peak < SILENCE_PEAK:
    raise AudioError(path, "silent")
  if float(np.max(np.ptp(wave, axis=0))) < SILENCE_PEAK:
    raise AudioError(path, "constant", f"every sample {float(wave.flat[0]):.3g}")


def load_audio(path: str, sample_rate: Optional[int] = None, mono: bool = True,
               min_seconds: float = 0.0) -> np.ndarray:
  """Reads, checks, down-mixes and resamples a file.

  Args:
    path: audio file in any format libsndfile reads.
    sample_rate: output rate (None: as stored).
    mono: average the channels ([time]); otherwise [time, channels].
    min_seconds: shorter files raise AudioError('too_short').
  Returns:
    float32 samples in [-1, 1]: peaks up to MAX_FLOAT_PEAK are clipped, larger ones
    rejected (AudioError 'out_of_range').
  """
  wave, rate = read_audio(path)
  check_audio(wave, rate, path, min_seconds)
  if mono:
    wave = to_mono(wave)
    if float(np.max(np.abs(wave))) < SILENCE_PEAK:  # channels that cancel each other
      raise AudioError(path, "silent", "after the down-mix to mono")
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
  """Counts files skipped per reason and names them for the report: every one, or the
  first `examples_per_reason` of each reason."""

  def __init__(self, examples_per_reason: Optional[int] = None):
    self.counts = collections.Counter()
    self.examples = collections.defaultdict(list)
    self._keep = examples_per_reason

  def add(self, error: AudioError) -> None:
    self.counts[error.reason] += 1
    if self._keep is None or len(self.examples[error.reason]) < self._keep:
      self.examples[error.reason].append(str(error))

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def summary(self) -> str:
    if not self.counts:
      return "no files skipped"
    parts = [f"{reason}: {count}" for reason, count in sorted(self.counts.items())]
    return f"skipped {self.total} files ({', '.join(parts)})"
