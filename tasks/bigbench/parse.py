"""BIG-bench JSON task -> formatted records (the schema of `tasks.sources`), as BIG-bench does it.

Follows bigbench==1.0.0's `bigbench/api/json_task.py` (`JsonTask.load_and_process_json`,
`default_format_fn`, `evaluate_fixed_shot`) at zero shots:

1. De-duplication: an example whose `json.dumps` equals an earlier one's is dropped
   (first occurrence kept, order kept).
2. Prompt, built per example with a fresh `numpy.random.RandomState(42)`:
     task_prefix + example_input_prefix ["\\nQ: "] + input
     [+ choice_prefix ["\\n  choice: "] + the choices joined by choice_prefix, in the order
        `RandomState(42).permutation(sorted(choices))` -- when the example has
        target_scores and append_choices_to_input (default true)]
     + example_output_prefix ["\\nA: "]
   (brackets: BIG-bench's defaults). Every example with n choices therefore shows them in
   the same seeded permutation of their sorted order, whatever the JSON order.
   The only difference from BIG-bench's string: we strip surrounding whitespace (the
   default prefixes begin with "\\n" and end with " "); `bigbench_prompt` gives the
   unstripped string.
3. Multiple choice: choices are scored in JSON order (BIG-bench's `choice` list),
   `label` is the first highest-scoring choice (BIG-bench's generative `target` when an
   example gives none), and `choice_scores` keeps every choice's target score, because
   BIG-bench's `multiple_choice_grade` credits `target_scores[predicted choice]`: tied
   correct choices all count, fractional scores count fractionally.
4. Task kind: multiple choice iff every example has target_scores and the task lists a
   multiple-choice metric (or lists no metrics at all); otherwise generative, with
   targets = the example's `target` (a string or list, all count) or else its best choice.
   A task listing both kinds of metric is scored as multiple choice here (one kind per
   task), as its `preferred_score` usually is.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tasks import sources

DEFAULT_INPUT_PREFIX = "\nQ: "
DEFAULT_OUTPUT_PREFIX = "\nA: "
DEFAULT_CHOICE_PREFIX = "\n  choice: "
SHUFFLE_SEED = 42  # JsonTask's default random_seed
MULTIPLE_CHOICE_METRICS = ("multiple_choice_grade", "calibration_multiple_choice_brier_score",
                           "expected_calibration_error", "weighted_log_probabilities",
                           "weighted_probabilities", "macro_f1")


def deduplicate(examples: Sequence[Mapping]) -> list:
  """Examples with exact duplicates (same `json.dumps`) removed, first occurrence kept."""
  seen, out = set(), []
  for ex in examples:
    key = json.dumps(ex)
    if key not in seen:
      seen.add(key)
      out.append(ex)
  return out


def shuffled_choices(choices: Sequence[str], seed: int = SHUFFLE_SEED) -> list[str]:
  """The order BIG-bench lists choices in a prompt: RandomState(seed).permutation(sorted(...)).

  Permuting indices draws the same numbers as permuting the array of strings (numpy's
  legacy shuffle makes the same Fisher-Yates draws for any 1-D array) and avoids numpy's
  fixed-width string conversion.
  """
  ordered = sorted(choices)
  return [ordered[i] for i in np.random.RandomState(seed).permutation(len(ordered))]


def task_kind(task: Mapping[str, Any]) -> str:
  examples = task.get("examples") or []
  metrics = task.get("metrics")
  mc_metric = metrics is None or any(m in MULTIPLE_CHOICE_METRICS for m in metrics)
  if examples and mc_metric and all(ex.get("target_scores") for ex in examples):
    return sources.MULTIPLE_CHOICE
  return sources.GENERATIVE


def bigbench_prompt(task: Mapping[str, Any], example: Mapping[str, Any]) -> str:
  """BIG-bench's zero-shot model input for one example, byte for byte (unstripped)."""
  text = str(example["input"])
  scores = example.get("target_scores")
  if scores and task.get("append_choices_to_input", True):
    prefix = task.get("choice_prefix", DEFAULT_CHOICE_PREFIX)
    text = text + prefix + prefix.join(shuffled_choices([str(c) for c in scores]))
  return (str(task.get("task_prefix", "")) + task.get("example_input_prefix", DEFAULT_INPUT_PREFIX)
          + text + task.get("example_output_prefix", DEFAULT_OUTPUT_PREFIX))


def format_input(task: Mapping[str, Any], example: Mapping[str, Any]) -> str:
  """Our model input: `bigbench_prompt` stripped of surrounding whitespace."""
  return bigbench_prompt(task, example).strip()


def _best_choice(scores: Mapping[str, Any]) -> Optional[int]:
  """Index (JSON order) of the first highest score; None when no choice beats the others."""
  values = [float(v) for v in scores.values()]
  top, low = max(values), min(values)
  if (len(values) == 1 and top == 0) or (len(values) > 1 and top <= low):
    return None  # BIG-bench refuses such an example ("No correct choice provided")
  return values.index(top)


def _targets(example: Mapping[str, Any]) -> list[str]:
  target = example["target"]
  return [str(t) for t in target] if isinstance(target, list) else [str(target)]


def parse_examples(task: Mapping[str, Any]) -> tuple[str, list[dict], dict]:
  """(kind, records, counts) of a BIG-bench task dict.

  counts: {'examples', 'duplicates', 'skipped'} -- skipped examples have no target, an
  empty target list, or no correct choice.
  """
  raw = list(task.get("examples") or [])
  examples = deduplicate(raw)
  kind = task_kind(task)
  records, skipped = [], 0
  for ex in examples:
    scores = ex.get("target_scores") or None
    label = _best_choice(scores) if scores else None
    if kind == sources.MULTIPLE_CHOICE:
      if label is None:
        skipped += 1
        continue
      record = sources.multiple_choice_record(format_input(task, ex), list(scores), label)
      record["choice_scores"] = [float(v) for v in scores.values()]
      records.append(record)
      continue
    if "target" in ex:
      targets = _targets(ex)
    elif label is not None:
      targets = [str(list(scores)[label])]
    else:
      targets = []
    if not targets:
      skipped += 1
      continue
    records.append(sources.generative_record(format_input(task, ex), targets))
  counts = {"examples": len(raw), "duplicates": len(raw) - len(examples), "skipped": skipped}
  return kind, records, counts


def parse_task(task: Mapping[str, Any]) -> tuple[str, list[dict]]:
  """(kind, records) of a BIG-bench task dict (see `parse_examples`)."""
  kind, records, _ = parse_examples(task)
  return kind, records
