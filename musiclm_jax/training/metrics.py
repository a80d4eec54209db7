"""Metric writing: TensorBoard event files, a JSON-lines log, and a progress bar.

Only process 0 writes (every process computes the same global metrics). The JSON-lines file
(`model_dir/metrics.jsonl`) is the machine-readable record used by tests and benchmarks.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping, Optional

import jax
import numpy as np
import tqdm
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes scalars (and, for codec models, audio) to TensorBoard and metrics.jsonl."""

  def __init__(self, model_dir: str, subdir: str = "train"):
    self._enabled = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self._enabled:
      os.makedirs(model_dir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(model_dir, "tensorboard", subdir))
      self._jsonl = open(os.path.join(model_dir, f"metrics_{subdir}.jsonl"), "a",
                         encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()

  def write_audio(self, step: int, name: str, audio: np.ndarray, sample_rate: int) -> None:
    if self._enabled:
      self._tb.add_audio(name, np.asarray(audio, np.float32), step, sample_rate=sample_rate)

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """A [height, width] array, scaled to [0, 1] for display (e.g. a spectrogram)."""
    if self._enabled:
      image = np.asarray(image, np.float32)
      span = max(float(image.max() - image.min()), 1e-9)
      self._tb.add_image(name, (image - image.min()) / span, step, dataformats="HW")

  def write_summaries(self, step: int, summaries: Mapping[str, Mapping]) -> None:
    """Writes a model's `summaries()` output (audio and images)."""
    for name, (audio, sample_rate) in summaries.get("audio", {}).items():
      self.write_audio(step, name, audio, sample_rate)
    for name, image in summaries.get("images", {}).items():
      self.write_image(step, name, image)

  def flush(self) -> None:
    if self._enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self._enabled:
      self._tb.close()
      self._jsonl.close()


def read_metrics(model_dir: str, subdir: str = "train") -> list[dict]:
  """The JSON-lines log as a list of dicts (last record wins for a repeated step)."""
  path = os.path.join(model_dir, f"metrics_{subdir}.jsonl")
  by_step = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        by_step[record["step"]] = record
  return [by_step[s] for s in sorted(by_step)]


class ProgressBar:
  """tqdm bar over training steps showing steps/s and the latest loss (process 0 only)."""

  def __init__(self, start_step: int, total_steps: int, desc: str = "train"):
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, desc=desc, unit="step",
                          dynamic_ncols=True, disable=jax.process_index() != 0)
    self._last_time = time.perf_counter()
    self._last_step = start_step

  def update(self, step: int, loss: Optional[float | Mapping[str, float]] = None) -> float:
    """Advances to `step`; returns steps/s since the last update.

    `loss` is one value, or {name: value} for models with several losses (GANs).
    """
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._bar.update(step - self._last_step)
    postfix = {"steps/s": f"{rate:.2f}"}
    if isinstance(loss, Mapping):
      postfix.update({name: f"{value:.4f}" for name, value in loss.items()})
    elif loss is not None:
      postfix["loss"] = f"{loss:.4f}"
    self._bar.set_postfix(postfix)
    self._last_time, self._last_step = now, step
    return rate

  def close(self):
    self._bar.close()
