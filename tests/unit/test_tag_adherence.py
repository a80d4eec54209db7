"""The independent judge's arithmetic: which tags a text names, AUCs and their p-values."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from musiclm_jax.evaluation import tag_adherence
from musiclm_jax.evaluation.musicnn import MTT_LABELS


@pytest.mark.parametrize("text, tags", [
    ("a solo piano playing slow music", {"piano", "slow"}),
    ("A fast fiddle tune (traditional), played by a solo trumpet", {"fast"}),  # no violin
    ("This madrigal is performed by a solo steel drums.", set()),            # not drums
    ("A harpsichord plays a moderate chorale.", {"harpsichord"}),            # not harp
    ("a leisurely piece for string quartet with a steady drum beat",
     {"slow", "strings", "drums"}),
    ("Quick, lively music: a choir and a solo cello", {"fast", "choir", "cello"}),
    ("an unaccompanied harp, played slowly", {"harp", "slow"}),
    ("A brass quartet plays a moderate Italian madrigal.", set()),
])
def test_named_tags_reads_instruments_and_tempo_words(text, tags):
  assert tag_adherence.named_tags(text) == tags


def test_auc_equals_sklearn_and_the_permutation_p_tracks_the_rank_test():
  rng = np.random.default_rng(0)
  labels = rng.random(120) < 0.3
  scores = np.round(rng.normal(size=120) + 0.6 * labels, 1)   # ties on purpose
  auc, p = tag_adherence.auc_with_permutation_p(scores, labels, permutations=20000)
  assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
  rank_test = stats.mannwhitneyu(scores[labels], scores[~labels], alternative="greater")
  assert p == pytest.approx(rank_test.pvalue, abs=0.005)


def test_perfect_separation_has_auc_one_and_the_smallest_p():
  scores = np.r_[np.arange(6) + 10.0, np.arange(6)]
  labels = np.r_[np.ones(6, bool), np.zeros(6, bool)]
  auc, p = tag_adherence.auc_with_permutation_p(scores, labels, permutations=5000)
  assert auc == 1.0
  # exact p is 1 / C(12, 6) = 1/924; the estimate is (1 + hits) / 5001
  assert p < 0.003
  assert tag_adherence.auc_with_permutation_p(-scores, labels, permutations=500)[0] == 0.0
  with pytest.raises(ValueError, match="positives and negatives"):
    tag_adherence.auc_with_permutation_p(scores, np.ones(12, bool))


def test_tag_aucs_finds_the_tag_that_follows_the_text_and_not_the_others():
  rng = np.random.default_rng(1)
  texts = [f"a solo {instrument} playing {tempo} music"
           for instrument in ("piano", "violin", "cello", "oboe") for tempo in ("slow", "fast")
           for _ in range(5)]
  probabilities = rng.uniform(0.0, 0.5, size=(len(texts), len(MTT_LABELS)))
  piano = MTT_LABELS.index("piano")
  for i, text in enumerate(texts):
    if "piano" in text:
      probabilities[i, piano] += 0.5                            # the tagger hears the piano
  table = tag_adherence.tag_aucs(probabilities, texts, permutations=2000)
  assert table["piano"]["auc"] == 1.0 and table["piano"]["p"] < 0.001
  assert (table["piano"]["positives"], table["piano"]["negatives"]) == (10, 30)
  assert table["violin"]["p"] > 0.01                            # no signal put there
  assert (table["slow"]["positives"], table["slow"]["negatives"]) == (20, 20)
  assert "strings" not in table and "oboe" not in table          # never named / no tag
  with pytest.raises(ValueError, match=r"must be \[40, 50\]"):
    tag_adherence.tag_aucs(probabilities[:, :10], texts)


def test_related_instruments_are_neither_positive_nor_negative():
  texts = ["a string quartet"] * 4 + ["a solo violin"] * 4 + ["a solo piano"] * 4
  table = tag_adherence.tag_aucs(np.full((12, len(MTT_LABELS)), 0.5), texts,
                                 permutations=100)
  assert (table["strings"]["positives"], table["strings"]["negatives"]) == (4, 4)  # piano only
  assert table["strings"]["auc"] == 0.5


def test_top_tags_and_visible_instruments():
  probabilities = np.zeros((2, len(MTT_LABELS)))
  probabilities[0, MTT_LABELS.index("piano")] = 0.9
  probabilities[0, MTT_LABELS.index("classical")] = 0.7
  probabilities[1, MTT_LABELS.index("choir")] = 0.8
  top = tag_adherence.top_tags(probabilities, count=2)
  assert top[0] == [("piano", 0.9), ("classical", 0.7)] and top[1][0] == ("choir", 0.8)
  ceiling = {"piano": {"auc": 0.9, "p": 1e-4}, "violin": {"auc": 0.6, "p": 0.2},
             "choir": {"auc": 0.8, "p": 0.02}}
  split = tag_adherence.visible_instruments(ceiling)
  assert split["visible"] == ["piano"]
  assert split["not_visible"] == ["violin", "choir"]
  assert "harp" in split["untested"]


def test_holm_adjustment_matches_its_definition():
  adjusted = tag_adherence.holm_adjusted([0.01, 0.04, 0.03, 0.005])
  # sorted: 0.005 x 4, 0.01 x 3, 0.03 x 2, 0.04 x 1 -> 0.02, 0.03, 0.06, then max(0.06, 0.04)
  np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
  assert tag_adherence.holm_adjusted([0.9, 0.8]) == [1.0, 1.0]
