"""Fréchet Audio Distance: the Fréchet distance between Gaussians fitted to two sets of
embeddings (Kilgour et al., 2019), with the sample counts and a bootstrap interval.

    FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)

The trace of the matrix square root is computed from the eigenvalues of the symmetric
PSD matrix S_a^1/2 S_b S_a^1/2 (float64, eigh), which stays real and stable where the usual
scipy.linalg.sqrtm(S_a @ S_b) of a non-symmetric product picks up imaginary parts and
needs an epsilon added to the diagonals for singular covariances (fewer clips than
dimensions).

FAD is biased upwards by about c / N for N generated clips, c depending on the generator
(Chong & Forsyth 2020 for FID; Gui et al. 2024 for FAD), so two FADs are only comparable
at the same N. `fad_infinity` removes the bias instead: FAD of random subsets of several
sizes, a line fitted against 1 / N, and its intercept, FAD-inf.
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


def fad_infinity(generated: np.ndarray, reference: np.ndarray, smallest: Optional[int] = None,
                 sizes: int = 10, draws: int = 4, seed: int = 0) -> Dict[str, float]:
  """FAD-inf (Gui et al. 2024): generated [N, D] against reference [M, D], extrapolated to
  infinitely many generated clips.

  FAD of `draws` random subsets (without replacement) at each of `sizes` sizes evenly
  spaced from `smallest` (default N // 2) to N, against the whole reference; a least-squares
  line FAD = fad_inf + slope / n. The reference's own finite-sample bias stays, as it is
  the same for every generated set compared with it.

  Returns {'fad_inf', 'slope', 'r2' (of the fit), 'fad' (at N), 'n_generated',
  'n_reference', 'dim', 'smallest'}.
  """
  generated = np.asarray(generated, np.float64)
  count = generated.shape[0]
  smallest = count // 2 if smallest is None else smallest
  if not 2 <= smallest < count:
    raise ValueError(f"smallest subset must be in [2, {count}), got {smallest}")
  reference_gaussian = fit_gaussian(reference)
  rng = np.random.default_rng(seed)
  ns, values = [], []
  for n in np.linspace(smallest, count, sizes).round().astype(int):
    for _ in range(1 if n == count else draws):
      subset = generated[rng.choice(count, n, replace=False)]
      ns.append(n)
      values.append(frechet_distance(fit_gaussian(subset), reference_gaussian))
  x, y = 1.0 / np.array(ns, np.float64), np.array(values)
  slope, intercept = np.polyfit(x, y, 1)
  residual = y - (intercept + slope * x)
  r2 = 1.0 - float(np.sum(residual ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-300))
  return {"fad_inf": float(intercept), "slope": float(slope), "r2": r2,
          "fad": frechet_distance(fit_gaussian(generated), reference_gaussian),
          "n_generated": int(count), "n_reference": int(reference_gaussian.count),
          "dim": int(generated.shape[1]), "smallest": int(smallest)}


def fad_from_stats(generated: Gaussian, reference: Gaussian) -> Dict[str, Optional[float]]:
  """FAD against precomputed statistics (no bootstrap: the embeddings are gone)."""
  return {"fad": frechet_distance(generated, reference), "n_generated": generated.count,
          "n_reference": reference.count, "dim": int(generated.mean.shape[0]),
          "ci_low": None, "ci_high": None, "bootstrap_bias": None, "bootstrap": 0}
