"""BIG-bench JSON task -> formatted records (the schema of `tasks.sources`).

BIG-bench examples come in two kinds:
  {"input": ..., "target_scores": {choice: score, ...}}  -> multiple choice,
      label = the highest-scoring choice (first one on ties);
  {"input": ..., "target": str | [str, ...]}            -> generative,
      training target = the first target, all targets count at evaluation.
A task whose examples are all multiple choice is a multiple-choice task; in a
mixed task the multiple-choice examples become generative (target = best choice).

Prompt (BIG-bench's defaults in brackets):
  task_prefix + example_input_prefix ["\\nQ: "] + input
  [+ choice_prefix ["\\n  choice: "] + choice, for each choice, when
     append_choices_to_input (default true) and the task is multiple choice]
  + example_output_prefix ["\\nA: "], stripped of surrounding whitespace.
"""

from __future__ import annotations

from typing import Any, Mapping

from tasks import sources

DEFAULT_INPUT_PREFIX = "\nQ: "
DEFAULT_OUTPUT_PREFIX = "\nA: "
DEFAULT_CHOICE_PREFIX = "\n  choice: "


def _targets(example: Mapping[str, Any]) -> list[str]:
  target = example["target"]
  return [str(t) for t in target] if isinstance(target, list) else [str(target)]


def _best_choice(scores: Mapping[str, float]) -> int:
  values = [float(v) for v in scores.values()]
  return values.index(max(values))


def task_kind(task: Mapping[str, Any]) -> str:
  examples = task.get("examples") or []
  if examples and all("target_scores" in ex for ex in examples):
    return sources.MULTIPLE_CHOICE
  return sources.GENERATIVE


def format_input(task: Mapping[str, Any], text: str, choices=None) -> str:
  parts = [task.get("task_prefix", "") or "",
           task.get("example_input_prefix", DEFAULT_INPUT_PREFIX), text]
  if choices is not None and task.get("append_choices_to_input", True):
    prefix = task.get("choice_prefix", DEFAULT_CHOICE_PREFIX)
    parts.extend(prefix + c for c in choices)
  parts.append(task.get("example_output_prefix", DEFAULT_OUTPUT_PREFIX))
  return "".join(parts).strip()


def parse_task(task: Mapping[str, Any]) -> tuple[str, list[dict]]:
  """(kind, records) of a BIG-bench task dict; examples without a target are skipped."""
  kind = task_kind(task)
  records = []
  for ex in task.get("examples") or []:
    if "target_scores" in ex and ex["target_scores"]:
      choices = [str(c) for c in ex["target_scores"]]
      label = _best_choice(ex["target_scores"])
      if kind == sources.MULTIPLE_CHOICE:
        records.append(sources.multiple_choice_record(
            format_input(task, str(ex["input"]), choices), choices, label))
        continue
      targets = [choices[label]]
      inputs = format_input(task, str(ex["input"]), choices)
    elif "target" in ex:
      targets = _targets(ex)
      if not targets:
        continue
      inputs = format_input(task, str(ex["input"]))
    else:
      continue
    records.append(sources.generative_record(inputs, targets))
  return kind, records
