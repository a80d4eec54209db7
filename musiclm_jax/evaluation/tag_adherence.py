"""Prompt adherence read by an independent judge: musicnn's MagnaTagATune tagger.

MuLan, and probes on MuLan embeddings, are trained in the same run as the generator: a
generator can please them without sounding like its prompt. musicnn's MTT tagger (Pons &
Serra, 2019; `evaluation.musicnn`) was trained on human tags of real recordings by nobody
here. Its 50 tags include instruments (piano, guitar, violin, cello, flute, harp,
harpsichord, strings, drums, choir) and tempo (slow, fast).

    texts = ["a solo piano playing slow music", ...]           # one per clip
    probabilities = tagger.embed_clips(audio, outputs=("tags",))["tags"]   # [N, 50]
    table = tag_aucs(probabilities, texts)     # {tag: {'auc', 'p', 'positives', ...}}

For each tag some text names, `tag_aucs` gives the ROC AUC of that tag's probability between
the clips whose text names it and the clips whose text names another value of its group
(another instrument; the opposite tempo; no drums), with a one-sided permutation p-value: 0.5
is a tagger that cannot tell them apart, 1.0 one that ranks every named clip first. The
same call on real renderings with their captions is the ceiling (what the tagger sees of
this music at all).
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from musiclm_jax.evaluation.musicnn import MTT_LABELS

# What a text must say to name a tag (lower-cased text; word boundaries). 'fiddle' is not
# a violin: the captioned set's "fiddle tune" is a style, played by any instrument.
_NAMES: Dict[str, str] = {
    "piano": r"\bpian(?:o|os|ist|oforte)\b",
    "guitar": r"\bguitar(?:s|ist)?\b",
    "violin": r"\bviolin(?:s|ist)?\b",
    "cello": r"\bcell(?:o|os|ist)\b",
    "flute": r"\bflutes?\b|\bflautist\b",
    "harp": r"\bharps?\b|\bharpist\b",
    "harpsichord": r"\bharpsichords?\b",
    "strings": r"\bstring (?:quartet|orchestra|ensemble|section|trio)s?\b|\bstrings\b",
    "drums": r"(?<!steel )\bdrums?\b|\bpercussion\b",
    "choir": r"\bchoirs?\b|\bchoral\b|\bsingers\b|\bvoices\b",
    "slow": r"\bslow(?:ly)?\b|\bleisurely\b|\bunhurried\b",
    "fast": r"\bfast\b|\bquick(?:ly)?\b|\bbrisk(?:ly)?\b|\bup-?tempo\b",
}
INSTRUMENT_TAGS: Tuple[str, ...] = ("piano", "guitar", "violin", "cello", "flute", "harp",
                                    "harpsichord", "strings", "choir")
TEMPO_TAGS: Tuple[str, ...] = ("slow", "fast")
# Tags a clip may rightly carry when its text names the other: a solo violin is string
# music, a string quartet has violins and a cello. Such clips are neither positive nor
# negative for each other.
_RELATED: Dict[str, Tuple[str, ...]] = {"strings": ("violin", "cello", "harp"),
                                        "violin": ("strings",), "cello": ("strings",),
                                        "harp": ("strings",)}
JUDGED_TAGS: Tuple[str, ...] = INSTRUMENT_TAGS + ("drums",) + TEMPO_TAGS
assert all(tag in MTT_LABELS for tag in JUDGED_TAGS)


def named_tags(text: str) -> frozenset:
  """The judged MTT tags `text` names, e.g. 'A slow chorale for string quartet' ->
  {'slow', 'strings'}."""
  lowered = text.lower()
  return frozenset(tag for tag, pattern in _NAMES.items() if re.search(pattern, lowered))


def _groups(tag: str, named: Sequence[frozenset]) -> Tuple[np.ndarray, np.ndarray]:
  """Boolean [N] masks of the clips positive and negative for `tag`."""
  positive = np.array([tag in n for n in named])
  if tag in TEMPO_TAGS:
    opposite = next(t for t in TEMPO_TAGS if t != tag)
    negative = np.array([opposite in n and tag not in n for n in named])
  elif tag == "drums":
    negative = ~positive
  else:
    excluded = {tag, *_RELATED.get(tag, ())}
    negative = np.array([not (excluded & n) for n in named])
  return positive, negative


def auc_with_permutation_p(scores: np.ndarray, positive: np.ndarray, permutations: int = 10000,
                           seed: int = 0) -> Tuple[float, float]:
  """ROC AUC of `scores` [N] for the boolean labels `positive` [N] (ties count half), and
  the one-sided permutation p-value of an AUC this high: (1 + #{AUC_perm >= AUC}) /
  (1 + permutations), the labels shuffled among the N clips."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  n_pos = int(positive.sum())
  n_neg = len(positive) - n_pos
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"an AUC needs positives and negatives, got {n_pos} and {n_neg}")
  ranks = stats.rankdata(scores)          # average ranks: a tie counts half
  offset = n_pos * (n_pos + 1) / 2
  auc = (ranks[positive].sum() - offset) / (n_pos * n_neg)
  rng = np.random.default_rng(seed)
  total = 0
  for start in range(0, permutations, 1000):        # 1000 shuffles at a time: bounded memory
    count = min(1000, permutations - start)
    chosen = np.argsort(rng.random((count, len(ranks))), axis=1)[:, :n_pos]
    permuted = (ranks[chosen].sum(axis=1) - offset) / (n_pos * n_neg)
    total += int(np.sum(permuted >= auc - 1e-12))
  return float(auc), float((1 + total) / (1 + permutations))


def tag_aucs(probabilities: np.ndarray, texts: Sequence[str], min_clips: int = 3,
             permutations: int = 10000, seed: int = 0) -> Dict[str, dict]:
  """Per judged tag, how well the tagger's probability of it separates the clips whose
  text names the tag from those whose text names another (module docstring).

  Args:
    probabilities: [N, 50] the MTT tagger's mean tag posteriors of N clips.
    texts: N prompts or captions, clip i's in row i.
    min_clips: tags with fewer positive or negative clips than this are left out.
  Returns:
    {tag: {'auc', 'p', 'p_holm', 'positives', 'negatives', 'mean_named', 'mean_other'}};
    p_holm: p adjusted for the number of tags tested (Holm's step-down).
  """
  probabilities = np.asarray(probabilities, np.float64)
  if probabilities.shape != (len(texts), len(MTT_LABELS)):
    raise ValueError(f"probabilities must be [{len(texts)}, {len(MTT_LABELS)}] (one row "
                     f"per text), got {list(probabilities.shape)}")
  named = [named_tags(t) for t in texts]
  table = {}
  for tag in JUDGED_TAGS:
    positive, negative = _groups(tag, named)
    if positive.sum() < min_clips or negative.sum() < min_clips:
      continue
    column = probabilities[:, MTT_LABELS.index(tag)]
    used = positive | negative
    auc, p = auc_with_permutation_p(column[used], positive[used], permutations, seed)
    table[tag] = {"auc": auc, "p": p, "positives": int(positive.sum()),
                  "negatives": int(negative.sum()),
                  "mean_named": float(column[positive].mean()),
                  "mean_other": float(column[negative].mean())}
  for tag, p in zip(table, holm_adjusted([row["p"] for row in table.values()])):
    table[tag]["p_holm"] = p
  return table


def holm_adjusted(p_values: Sequence[float]) -> List[float]:
  """Holm's step-down adjustment of m p-values (family-wise error): the i-th smallest is
  multiplied by m - i + 1, made non-decreasing in that order and capped at 1."""
  order = np.argsort(p_values)
  adjusted, running = [0.0] * len(p_values), 0.0
  for rank, index in enumerate(order):
    running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
    adjusted[index] = running
  return adjusted


def top_tags(probabilities: np.ndarray, count: int = 3) -> List[List[Tuple[str, float]]]:
  """[N, 50] tag probabilities -> per clip its `count` most probable MTT tags, with their
  probabilities, most probable first."""
  order = np.argsort(-np.asarray(probabilities), axis=1)[:, :count]
  return [[(MTT_LABELS[j], float(row[j])) for j in top] for row, top in
          zip(np.asarray(probabilities), order)]


def visible_instruments(ceiling: Mapping[str, dict], min_auc: float = 0.75,
                        max_p: float = 0.01) -> Dict[str, List[str]]:
  """Splits the instrument tags of a ceiling table (`tag_aucs` on real renderings) into
  those the tagger sees in this music (AUC >= min_auc at p < max_p) and those it does not."""
  seen = [t for t in INSTRUMENT_TAGS + ("drums",)
          if t in ceiling and ceiling[t]["auc"] >= min_auc and ceiling[t]["p"] < max_p]
  return {"visible": seen, "not_visible": [t for t in INSTRUMENT_TAGS + ("drums",)
                                           if t in ceiling and t not in seen],
          "untested": [t for t in INSTRUMENT_TAGS + ("drums",) if t not in ceiling]}
