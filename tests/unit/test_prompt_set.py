"""Evaluation prompts: every ensemble and tempo, in wordings the captions never use."""

import collections

import numpy as np

from musiclm_jax.evaluation import prompt_set, tag_adherence
from musiclm_jax.music import render

ENSEMBLES = [name for name, _ in render.ENSEMBLES] + [f"a solo {s}" for s in render.SOLOISTS]
# The captions' frames (music_captions.caption_of): none of them appears in a prompt.
CAPTION_FRAMES = ("played by", "is performed by", " plays a ", "The tempo is", " BPM")


def test_prompts_cover_every_template_and_avoid_the_caption_frames():
  prompts = prompt_set.draw(ENSEMBLES, 600, np.random.default_rng(0))
  assert {p.template for p in prompts} == set(range(len(prompt_set.TEMPLATES)))
  assert not [p.text for p in prompts if any(f in p.text for f in CAPTION_FRAMES)]
  new_words = ("leisurely", "unhurried", "brisk", "quick", "medium-tempo", "walking-pace",
               "unaccompanied", "alone", "just one", "nothing but")
  reworded = [p for p in prompts if any(w in p.text for w in new_words)]
  assert len(reworded) > 0.5 * len(prompts)
  assert len({p.text for p in prompts}) > 0.8 * len(prompts)


def test_every_ensemble_gets_its_share_of_prompts():
  counts = collections.Counter(p.ensemble for p in prompt_set.draw(
      ENSEMBLES, 50, np.random.default_rng(1)))
  assert set(counts) == set(ENSEMBLES)
  assert max(counts.values()) - min(counts.values()) <= 1


def test_each_prompt_names_its_own_ensemble_and_tempo():
  rng = np.random.default_rng(1)
  for p in prompt_set.draw(ENSEMBLES, 300, rng):
    instrument = p.ensemble.split(" ", 1)[1].removeprefix("solo ")
    assert instrument in p.text
    tempo_named = tag_adherence.named_tags(p.text) & {"slow", "fast"}
    assert tempo_named == ({p.tempo} if p.tempo != "moderate" else set()), p.text


def test_prompts_for_given_labels_keep_their_mix_in_new_wordings():
  """FAD's generation set: one prompt per given (ensemble, tempo), in the same order and so
  the same mix, worded like the other evaluation prompts."""
  labels = [("a church organ", "slow"), ("a church organ", "moderate"),
            ("a solo flute", "fast")] * 4
  prompts = prompt_set.for_labels(labels, np.random.default_rng(0))
  assert [(p.ensemble, p.tempo) for p in prompts] == labels
  assert {p.template for p in prompts} == set(range(len(prompt_set.TEMPLATES)))
  assert not [p.text for p in prompts if any(f in p.text for f in CAPTION_FRAMES)]
  assert all(p.ensemble.split(" ")[-1] in p.text for p in prompts)
  with np.testing.assert_raises_regex(ValueError, "tempo must be one of"):
    prompt_set.for_labels([("a choir", "andante")], np.random.default_rng(0))
