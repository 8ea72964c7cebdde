"""Mixture rates, rate helpers, and errors for unknown names."""

import collections

import pytest

import tasks
from tasks import mixtures, registry

TEST_MIXTURE = "test_tasks_rates_mixture"


@pytest.fixture
def rate_mixture():
  names = tasks.train_tasks("synthetic")[:3]
  mixtures.register_mixture(TEST_MIXTURE, "synthetic", names,
                            rates={names[0]: 1.0, names[1]: 3.0, names[2]: 6.0})
  yield names
  registry.remove_mixture(TEST_MIXTURE)


def test_mixture_rates_are_respected(rate_mixture):
  table = tasks.task_id_table(TEST_MIXTURE)
  assert sorted(table) == sorted(rate_mixture)
  counts = collections.Counter()
  for batch in tasks.get_batches(TEST_MIXTURE, "train", batch_size=250, seed=0):
    counts.update(batch["task_ids"].tolist())
    if sum(counts.values()) >= 2000:
      break
  total = sum(counts.values())
  expected = {table[rate_mixture[0]]: 0.1, table[rate_mixture[1]]: 0.3,
              table[rate_mixture[2]]: 0.6}
  assert set(counts) == set(expected)
  for task_id, p in expected.items():
    assert abs(counts[task_id] / total - p) < 0.035, (counts, expected)


def test_equal_rates_of_the_synthetic_training_mixture():
  spec = registry.mixture_spec("synthetic_train")
  assert len(spec.rates) == 24 and {r for _, r in spec.rates} == {1.0}


def test_rate_helpers():
  counts = {"a": 100, "b": 10_000, "c": 400}
  assert mixtures.proportional_rates(counts, cap=1000) == {"a": 100.0, "b": 1000.0, "c": 400.0}
  t2 = mixtures.temperature_rates(counts, temperature=2.0, cap=1000)
  assert t2 == pytest.approx({"a": 10.0, "b": 1000 ** 0.5, "c": 20.0})
  probs = mixtures.mixing_probabilities(t2)
  assert sum(probs.values()) == pytest.approx(1.0)
  # Higher temperature flattens the distribution.
  p1 = mixtures.mixing_probabilities(mixtures.proportional_rates(counts, cap=1000))
  assert probs["a"] > p1["a"] and probs["b"] < p1["b"]
  with pytest.raises(ValueError, match="temperature"):
    mixtures.temperature_rates(counts, temperature=0)


def test_lazy_rate_counts_training_examples():
  name = tasks.train_tasks("synthetic")[0]
  rate = mixtures.lazy_rate(mixtures.train_split_size, temperature=1.0, cap=1500)
  assert rate(registry.provider(name)) == 1500.0  # 2000 training examples, capped
  assert mixtures.lazy_rate(mixtures.train_split_size)(registry.provider(name)) == 2000.0


def test_unknown_names_list_close_matches():
  with pytest.raises(tasks.UnknownNameError) as err:
    next(tasks.get_batches("synthetic_trian", "train", batch_size=2))
  assert isinstance(err.value, KeyError)
  assert "synthetic_train" in err.value.close_matches
  assert "synthetic_train" in str(err.value)
  heldout = tasks.heldout_tasks("synthetic")[0]
  with pytest.raises(KeyError, match=heldout):
    tasks.eval_examples(heldout.replace("_then_", "_than_"), "test")
  with pytest.raises(KeyError, match="synthetic"):
    tasks.heldout_tasks("synthetc")
  with pytest.raises(ValueError, match="no rate"):
    mixtures.register_mixture("x", "synthetic", [heldout], rates={})
