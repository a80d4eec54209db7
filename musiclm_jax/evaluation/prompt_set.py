"""Evaluation prompts that name an ensemble and a tempo in words the captions never use.

The captioned music set (`music.music_captions`) writes its captions from three templates
("A {tempo} {style}, played by {ensemble} ...", "This {style} is performed by {ensemble}.
The tempo is {tempo} ...", "{Ensemble} plays a {tempo} {style} ..."). A generator that
follows only those strings has learnt captions, not language. These prompts reword both
attributes (synonyms: "leisurely", "brisk", "an unaccompanied violin", "violin alone"),
reorder them (tempo first, instrumentation last) and add words the captions lack
("recorded in a quiet room", "play me something"), so adherence measured on them is
adherence to what the words mean.

    prompts = prompt_set.draw(ensembles, count=240, rng=np.random.default_rng(0))
    prompts[0].text   # e.g. 'brisk music for solo flute'
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence

import numpy as np

TEMPOS = ("slow", "moderate", "fast")
# Tempo words per tempo; the first is the captions' own word.
TEMPO_WORDS = {"slow": ("slow", "leisurely", "unhurried"),
               "moderate": ("moderate", "medium-tempo", "walking-pace"),
               "fast": ("fast", "brisk", "quick")}
# {tempo}: a tempo word; {ens}: the ensemble with its article ('a solo violin'); {bare}:
# without ('solo violin'). Template 0 is the captions' vocabulary in a new frame.
TEMPLATES = (
    "{ens} playing {tempo} music",
    "{tempo} music for {bare}",
    "{Ens}, {tempo}, recorded in a quiet room",
    "play me something {tempo} with {ens}",
    "Instrumentation: {bare}. Tempo: {tempo}.",
    "an instrumental piece at a {tempo} pace, performed by {ens}",
)


@dataclasses.dataclass(frozen=True)
class Prompt:
  ensemble: str       # the captioned set's ensemble, e.g. 'a solo violin'
  tempo: str          # 'slow' | 'moderate' | 'fast'
  template: int       # index into TEMPLATES
  text: str


def ensemble_wordings(ensemble: str) -> List[str]:
  """Ways to say a captioned-set ensemble ('a solo violin', 'a string quartet'), the
  captions' own first."""
  if ensemble.startswith("a solo "):
    instrument = ensemble[len("a solo "):]
    article = "an" if instrument[0] in "aeiou" else "a"
    return [ensemble, f"{article} {instrument} alone", f"an unaccompanied {instrument}",
            f"just one {instrument}"]
  bare = ensemble.split(" ", 1)[1] if ensemble.startswith(("a ", "an ")) else ensemble
  return [ensemble, f"the {bare}", f"nothing but {ensemble}"]


def _bare(wording: str) -> str:
  """'a string quartet' -> 'string quartet'; 'an unaccompanied oboe' -> 'unaccompanied oboe'."""
  for article in ("a ", "an ", "the "):
    if wording.startswith(article):
      return wording[len(article):]
  return wording


def render(ensemble: str, tempo: str, template: int, rng: np.random.Generator) -> str:
  """One prompt text: template `template` with a wording of each attribute drawn by `rng`."""
  wordings, words = ensemble_wordings(ensemble), TEMPO_WORDS[tempo]
  ens, word = wordings[rng.integers(len(wordings))], words[rng.integers(len(words))]
  return TEMPLATES[template].format(ens=ens, Ens=ens[0].upper() + ens[1:], bare=_bare(ens),
                                    tempo=word)


def draw(ensembles: Sequence[str], count: int, rng: np.random.Generator,
         templates: Sequence[int] = tuple(range(len(TEMPLATES)))) -> List[Prompt]:
  """`count` prompts: the ensembles balanced (each named count / len(ensembles) times,
  +-1, in random order, so every instrument a judge can hear gets its share of prompts), a
  random tempo, and the templates in turn (each used count / len(templates) times)."""
  if not ensembles:
    raise ValueError("no ensembles to prompt for")
  rounds = -(-count // len(ensembles))
  order = np.concatenate([rng.permutation(len(ensembles)) for _ in range(rounds)])
  out = []
  for i in range(count):
    ensemble = ensembles[order[i]]
    tempo = TEMPOS[rng.integers(len(TEMPOS))]
    template = templates[i % len(templates)]
    out.append(Prompt(ensemble, tempo, template, render(ensemble, tempo, template, rng)))
  return out


def for_labels(labels: Sequence[tuple], rng: np.random.Generator,
               templates: Sequence[int] = tuple(range(len(TEMPLATES)))) -> List[Prompt]:
  """A prompt for each (ensemble, tempo) of `labels`, in the templates in turn: e.g. the
  held-out clips' own labels, so that generated clips name the same mix of music as the
  clips they are compared with (FAD's generation set)."""
  out = []
  for i, (ensemble, tempo) in enumerate(labels):
    if tempo not in TEMPO_WORDS:
      raise ValueError(f"tempo must be one of {TEMPOS}, got {tempo!r}")
    template = templates[i % len(templates)]
    out.append(Prompt(ensemble, tempo, template, render(ensemble, tempo, template, rng)))
  return out
