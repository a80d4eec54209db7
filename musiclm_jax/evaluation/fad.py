"""Fréchet Audio Distance: the Fréchet distance between Gaussians fitted to two sets of
embeddings (Kilgour et al., 2019), with the sample counts and a bootstrap interval.

    FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)

The trace of the matrix square root is computed from the eigenvalues of the symmetric
PSD matrix S_a^1/2 S_b S_a^1/2 (float64, eigh), which stays real and stable where the usual
scipy.linalg.sqrtm(S_a @ S_b) of a non-symmetric product picks up imaginary parts and
needs an epsilon added to the diagonals for singular covariances (fewer clips than
dimensions).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Gaussian:
  """mean [D], covariance [D, D] (unbiased), fitted to `count` embeddings."""
  mean: np.ndarray
  cov: np.ndarray
  count: int


def fit_gaussian(embeddings: np.ndarray) -> Gaussian:
  """Embeddings [N, D] (N >= 2) -> their Gaussian."""
  x = np.asarray(embeddings, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"embeddings must be [N >= 2, D], got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError("embeddings hold NaN or infinite values")
  return Gaussian(x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]),
                  x.shape[0])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
  """Fréchet distance between two Gaussians (>= 0)."""
  if a.mean.shape != b.mean.shape:
    raise ValueError(f"embedding sizes differ: {a.mean.shape[0]} vs {b.mean.shape[0]}")
  root_a = _psd_sqrt(a.cov)
  middle = root_a @ b.cov @ root_a
  trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
  distance = (np.sum(np.square(a.mean - b.mean)) + np.trace(a.cov) + np.trace(b.cov)
              - 2 * trace_sqrt)
  return float(max(distance, 0.0))


def fad(generated: np.ndarray, reference: np.ndarray, bootstrap: int = 200,
        seed: int = 0, confidence: float = 0.95) -> Dict[str, float]:
  """FAD of generated [N, D] vs reference [M, D] embeddings, with a bootstrap interval
  (both sets resampled with replacement `bootstrap` times; 0: none).

  A resample repeats clips, which shrinks its covariance's rank and biases FAD upwards
  (FAD itself is biased upwards for small N, Chung et al. 2023), so the bootstrap's
  percentiles sit above the estimate. The interval is those percentiles shifted by the
  bootstrap's bias (mean of the draws - estimate), also reported.

  Returns {'fad', 'ci_low', 'ci_high', 'bootstrap_bias', 'n_generated', 'n_reference',
  'dim', 'bootstrap'}. Compare FADs computed with the same counts.
  """
  generated = np.asarray(generated, np.float64)
  reference = np.asarray(reference, np.float64)
  value = frechet_distance(fit_gaussian(generated), fit_gaussian(reference))
  report = {"fad": value, "n_generated": int(generated.shape[0]),
            "n_reference": int(reference.shape[0]), "dim": int(generated.shape[1])}
  low = high = bias = None
  if bootstrap:
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
      g = generated[rng.integers(0, len(generated), len(generated))]
      r = reference[rng.integers(0, len(reference), len(reference))]
      draws.append(frechet_distance(fit_gaussian(g), fit_gaussian(r)))
    tail = (1 - confidence) / 2 * 100
    bias = float(np.mean(draws) - value)
    low, high = (max(float(v) - bias, 0.0) for v in np.percentile(draws, [tail, 100 - tail]))
  report.update(ci_low=low, ci_high=high, bootstrap_bias=bias, bootstrap=int(bootstrap))
  return report


def fad_from_stats(generated: Gaussian, reference: Gaussian) -> Dict[str, Optional[float]]:
  """FAD against precomputed statistics (no bootstrap: the embeddings are gone)."""
  return {"fad": frechet_distance(generated, reference), "n_generated": generated.count,
          "n_reference": reference.count, "dim": int(generated.mean.shape[0]),
          "ci_low": None, "ci_high": None, "bootstrap_bias": None, "bootstrap": 0}
