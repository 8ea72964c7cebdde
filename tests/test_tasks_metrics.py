"""Exact match, Rouge-L and rank-classification accuracy (percentages)."""

import pytest

from tasks import metrics


def test_exact_match_is_case_sensitive_and_accepts_any_reference():
  assert metrics.exact_match(["ABC", "abc"], ["ABC", "ABC"]) == 50.0
  assert metrics.exact_match([["grey", "gray"], "x"], ["gray ", "y"]) == 50.0
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.exact_match(["a", "b"], ["a"])


def test_rouge_l_matches_hand_computed_lcs_f_measure():
  # LCS("the cat sat on the mat", "the cat on the mat") = 5: P = 5/5, R = 5/6.
  f = 2 * 1.0 * (5 / 6) / (1.0 + 5 / 6)
  assert metrics.rouge_l_fmeasure("the cat sat on the mat", "the cat on the mat") == \
      pytest.approx(f)
  # Order matters (subsequence, not bag of words): LCS("a b c d", "d c b a") = 1.
  assert metrics.rouge_l_fmeasure("a b c d", "d c b a") == pytest.approx(0.25)
  # Tokenisation lowercases and drops punctuation, as rouge_score does.
  assert metrics.rouge_l_fmeasure("Hello, World!", "hello world") == 1.0
  assert metrics.rouge_l_fmeasure("abc", "") == 0.0
  assert metrics.rouge_l(["the cat sat on the mat", ["x y", "a b c d"]],
                         ["the cat on the mat", "d c b a"]) == pytest.approx(
                             100 * (f + 0.25) / 2)


def test_rouge_l_stems_as_the_official_sni_metric():
  # Porter stemmer (rouge_score, use_stemmer=True): cats/cat, running/run match.
  assert metrics.rouge_tokens("The cats were running") == ["the", "cat", "were", "run"]
  assert metrics.rouge_l_fmeasure("the cat runs", "the cats running") == 1.0


def test_normalized_exact_match_is_the_official_sni_one():
  # Lower-case, punctuation and extra whitespace dropped; articles are kept.
  assert metrics.normalize_answer("  The  Answer, is: YES! ") == "the answer is yes"
  assert metrics.exact_match(["Yes."], ["yes"], normalize=True) == 100.0
  assert metrics.exact_match(["Yes."], ["yes"]) == 0.0
  assert metrics.exact_match(["a dog"], ["dog"], normalize=True) == 0.0


def test_reference_choice_max_or_one_sampled_reference():
  targets = [["wrong %d" % i, "right"] for i in range(40)]
  preds = ["right"] * 40
  assert metrics.rouge_l(targets, preds, reference="max") == 100.0
  sampled = metrics.rouge_l(targets, preds, reference="sampled")
  assert 20.0 < sampled < 80.0  # about half the examples drew the other reference
  assert metrics.rouge_l(targets, preds, reference="sampled") == sampled  # reproducible
  assert metrics.exact_match(targets, preds, reference="sampled") == sampled
  with pytest.raises(ValueError, match="valid choices"):
    metrics.rouge_l(targets, preds, reference="first")


def test_rank_classification_accuracy_from_scores():
  scores = [[-1.0, -0.5], [-3.0, -4.0, -2.0], [0.0, -1.0]]
  assert metrics.rank_classification_accuracy(scores, [1, 2, 1]) == pytest.approx(200 / 3)
  assert metrics.accuracy([0, 1], [0, 0]) == 50.0


def test_seqio_style_metric_fns_return_dicts():
  out = metrics.generation_metrics(["a b"], ["a b"])
  assert out == {"exact_match": 100.0, "rouge_l": 100.0}
  assert metrics.generation_metrics(["A b."], ["a b"], normalize=True) == out
  assert metrics.exact_match_metric(["a"], ["b"]) == {"exact_match": 0.0}
