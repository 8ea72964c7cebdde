"""Mixing rates for multi-task mixtures.

seqio samples each task with probability rate / sum(rates). Three schemes:

  equal:               every task 1.
  examples-capped:     min(n_examples, cap) (T5's "examples-proportional
                       mixing" with an artificial dataset size limit).
  temperature-scaled:  min(n_examples, cap) ** (1 / T); T=1 is proportional,
                       large T tends to equal.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import seqio

from tasks import registry


def temperature_rates(counts: Mapping[str, int], temperature: float = 1.0,
                      cap: Optional[int] = None) -> dict[str, float]:
  """Rates from example counts: min(n, cap) ** (1 / temperature)."""
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  out = {}
  for name, n in counts.items():
    n = min(int(n), cap) if cap is not None else int(n)
    out[name] = float(max(n, 0)) ** (1.0 / temperature)
  return out


def proportional_rates(counts: Mapping[str, int], cap: Optional[int] = None) -> dict[str, float]:
  """Examples-proportional rates, each count capped at `cap`."""
  return temperature_rates(counts, 1.0, cap)


def mixing_probabilities(rates: Mapping[str, float]) -> dict[str, float]:
  """Rates normalised to the sampling probability of each task."""
  total = sum(rates.values())
  if total <= 0:
    raise ValueError(f"mixing rates must have a positive sum, got {dict(rates)}")
  return {k: v / total for k, v in rates.items()}


def lazy_rate(count_fn: Callable[[str], int], temperature: float = 1.0,
              cap: Optional[int] = None) -> Callable[[seqio.Task], float]:
  """A seqio rate function: counts the task's examples only when the mixture is sampled."""

  def rate(task: seqio.Task) -> float:
    return temperature_rates({task.name: count_fn(task.name)}, temperature, cap)[task.name]

  return rate


def train_split_size(task_name: str) -> int:
  """Number of formatted training examples of a registered task."""
  return len(registry.formatted_records(task_name, "train"))


def register_mixture(name: str, family: str, task_names: Sequence[str], *,
                     rates: Optional[Mapping[str, float]] = None,
                     scheme: str = "equal", temperature: float = 1.0,
                     cap: Optional[int] = None,
                     factory: Optional[Callable[..., seqio.Mixture]] = None) -> seqio.Mixture:
  """Registers a mixture of `task_names`.

  Args:
    rates: explicit rates per task (overrides `scheme`).
    scheme: 'equal', 'proportional' (capped example counts) or 'temperature';
      the last two count each task's training examples lazily.
    factory: builds the seqio.Mixture (default seqio.Mixture; see registry.MixtureSpec).
  """
  if rates is not None:
    missing = sorted(set(task_names) - set(rates))
    if missing:
      raise ValueError(f"mixture {name!r}: no rate for tasks {missing}")
    pairs = [(t, float(rates[t])) for t in task_names]
  elif scheme == "equal":
    pairs = [(t, 1.0) for t in task_names]
  elif scheme in ("proportional", "temperature"):
    fn = lazy_rate(train_split_size, temperature if scheme == "temperature" else 1.0, cap)
    pairs = [(t, fn) for t in task_names]
  else:
    raise ValueError(f"unknown mixing scheme {scheme!r}; valid: ['equal', 'proportional', "
                     "'temperature']")
  return registry.add_mixture(name, family, pairs, factory)
