"""KLD: how far the sound-event content of generated clips is from their references, as
the KL divergence between a classifier's label posteriors of each generated clip and its
reference clip, averaged over pairs (MusicLM, after AudioGen; here with musicnn's MTT
tagger, 50 tags).

Two readings of a multi-label tagger's output:
  'softmax'   the logits' softmax as one categorical distribution over tags (AudioLDM's
              'KL'), KL(reference || generated);
  'bernoulli' each tag an independent yes/no posterior (the tagger's sigmoid), the KL of
              the two Bernoullis averaged over tags.
Both are 0 for identical posteriors and grow as the tags disagree.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_divergence(reference_logits: np.ndarray, generated_logits: np.ndarray,
                  mode: str = "softmax") -> np.ndarray:
  """Per pair KL(reference || generated) from logits [N, tags] -> [N]."""
  ref = np.asarray(reference_logits, np.float64)
  gen = np.asarray(generated_logits, np.float64)
  if ref.shape != gen.shape or ref.ndim != 2:
    raise ValueError(f"logits must be two [N, tags] arrays of one shape, got {ref.shape} "
                     f"and {gen.shape}")
  if mode == "softmax":
    log_p, log_q = _log_softmax(ref), _log_softmax(gen)
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
  if mode == "bernoulli":
    p = np.clip(1 / (1 + np.exp(-ref)), EPS, 1 - EPS)
    q = np.clip(1 / (1 + np.exp(-gen)), EPS, 1 - EPS)
    return np.mean(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), axis=-1)
  raise ValueError(f"mode must be 'softmax' or 'bernoulli', got {mode!r}")


def kld(reference_logits: np.ndarray, generated_logits: np.ndarray, mode: str = "softmax"
        ) -> dict:
  """{'kld': mean over pairs, 'kld_std', 'n_pairs', 'mode'}."""
  values = kl_divergence(reference_logits, generated_logits, mode)
  return {"kld": float(values.mean()), "kld_std": float(values.std()),
          "n_pairs": int(values.shape[0]), "mode": mode}
