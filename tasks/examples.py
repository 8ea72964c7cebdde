"""Evaluation examples as plain Python, and rank-classification pairs."""

from __future__ import annotations

import logging
from typing import Mapping, Optional

from tasks import registry, sources

log = logging.getLogger(__name__)


def eval_examples(name: str, split: str = "test",
                  max_examples: Optional[int] = None) -> list[dict]:
  """The task's formatted examples for evaluation, in a fixed order.

  Each dict has 'inputs' (str), 'task_id' (int) and 'targets' (list[str], any
  of which counts); multiple-choice examples add 'choices' (list[str]) and
  'label' (int) and have targets == [choices[label]], plus 'choice_scores'
  (list[float]) when the task grades choices itself (BIG-bench's target_scores).
  With `max_examples`, the first ones are kept and the subsampling is logged.
  """
  if registry.check_name(name) == "mixture":
    raise ValueError(f"eval_examples takes a task, got the mixture {name!r}; its tasks: "
                     f"{registry.mixture_tasks(name)}")
  records = registry.formatted_records(name, split)
  if max_examples is not None and len(records) > max_examples:
    log.info("%s: evaluating %d of its %d %s examples (max_eval_examples=%d)", name,
             max_examples, len(records), split, max_examples)
    records = records[:max_examples]
  out = []
  for r in records:
    ex = {"inputs": r["inputs"], "task_id": int(r["task_id"])}
    if "choices" in r:
      ex.update(choices=list(r["choices"]), label=int(r["label"]),
                targets=[r["choices"][int(r["label"])]])
      if "choice_scores" in r:
        ex["choice_scores"] = [float(x) for x in r["choice_scores"]]
    else:
      ex["targets"] = list(r.get("answers") or [r["targets"]])
    out.append(ex)
  return out


def metric_names(name: str) -> tuple:
  """The metrics a task reports: ('accuracy',) for multiple choice, else its own."""
  spec = registry.task_spec(name)
  if spec.kind == sources.MULTIPLE_CHOICE:
    return ("accuracy",)
  return tuple(spec.metric_names) or ("exact_match", "rouge_l")


def rank_classification_pairs(example: Mapping) -> list[tuple[str, str]]:
  """One (inputs, choice) pair per answer choice, in choice order.

  The evaluator scores each pair's target log-likelihood; the prediction is
  the argmax, compared with example['label'].
  """
  if "choices" not in example:
    raise ValueError("rank classification needs a multiple-choice example with 'choices'; "
                     f"got keys {sorted(example)}")
  return [(example["inputs"], choice) for choice in example["choices"]]
