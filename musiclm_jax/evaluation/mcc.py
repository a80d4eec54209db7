"""MCC, MuLan Cycle Consistency (MusicLM section 5): the cosine between the MuLan text
embedding of each prompt and the MuLan audio embedding of the clip generated for it,
averaged. In [-1, 1]; higher means the music matches its text better in MuLan's eyes."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def mcc(mulan, prompts: Sequence[str], audio: np.ndarray) -> dict:
  """mulan: `mulan.tokenizer.MuLanTokenizer`; audio [N, samples] at its sample rate.
  Returns {'mcc': mean cosine, 'mcc_std', 'n'}."""
  if len(prompts) != len(audio):
    raise ValueError(f"{len(prompts)} prompts for {len(audio)} clips")
  scores = np.asarray(mulan.score(list(prompts), audio), np.float64)
  return {"mcc": float(scores.mean()), "mcc_std": float(scores.std()), "n": int(len(scores))}
