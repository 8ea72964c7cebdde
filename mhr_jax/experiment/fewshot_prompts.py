"""Few-shot data for the paper's T0 protocol: prompts, k-shot draws, batches, eval examples.

`prompts`:
  'handwritten'  each task's one fixed prompt (tasks/t0.py and the other families);
  'promptsource' a promptsource template drawn per example each time it is
                 read, for training and evaluation (tasks/t0_templates.py, as mttl).
Few-shot batches here are built in Python from the k drawn examples (k is at
most a few dozen): every epoch a seeded permutation cut into full batches
(the remainder dropped, as mttl's `drop_last=True`), prompts applied per
draw, and either LM batches (`make_batch`) or choice batches
(`make_choice_batch`, for `multiple_choice.MultipleChoiceLoss`).
"""

from __future__ import annotations

from typing import Iterator, Mapping, Optional, Sequence

import numpy as np

import tasks
from mhr_jax.evaluation.batching import make_batch, make_choice_batch
from tasks import t0_templates
from tasks.fewshot import select_fewshot

PROMPTS = ("handwritten", "promptsource")


def check_prompts(prompts: str) -> None:
  if prompts not in PROMPTS:
    raise ValueError(f"prompts={prompts!r} is not supported; valid choices: {list(PROMPTS)}")


def shots(task: str, k: int, k_by_task: Optional[Mapping[str, int]]) -> int:
  """k for `task`: its entry in `k_by_task`, else `k`."""
  return int((k_by_task or {}).get(task, k))


def fewshot_pool(task: str, prompts: str) -> list[dict]:
  """The training examples the k shots are drawn from (raw HF-schema records for templates)."""
  check_prompts(prompts)
  if prompts == "promptsource":
    return t0_templates.raw_records(task, "train")
  return tasks.registry.formatted_records(task, "train")


def _prompted(task: str, examples: Sequence[Mapping], prompts: str,
              rng: np.random.Generator) -> list[Mapping]:
  if prompts == "promptsource":
    return t0_templates.templated(task, examples, rng)
  return list(examples)


def fewshot_batches(task: str, k: int, seed: int, batch_size: int, vocab, input_length: int,
                    target_length: int, *, prompts: str = "handwritten",
                    sampling: Optional[str] = None, choices: bool = False
                    ) -> Iterator[dict]:
  """Endless few-shot batches of `task` (task id 0): `min(batch_size, k)` examples each.

  sampling: see `tasks.fewshot.select_fewshot` ('shuffle' = mttl's draw).
  choices: choice batches (every answer choice, for the multiple-choice
  losses) instead of LM batches on the correct answer.
  """
  pool = fewshot_pool(task, prompts)
  chosen = [pool[i] for i in select_fewshot(pool, k, seed, task=task, sampling=sampling,
                                            balanced="label" in pool[0])]
  if choices and "choices" not in chosen[0] and prompts != "promptsource":
    raise ValueError(f"the multiple-choice losses need a multiple-choice task; {task!r} has "
                     "no answer choices")
  b = min(batch_size, k)
  rng = np.random.default_rng([int(seed), 1])
  while True:
    order = rng.permutation(len(chosen))
    for start in range(0, len(chosen) - b + 1, b):
      recs = _prompted(task, [chosen[i] for i in order[start:start + b]], prompts, rng)
      if choices:
        yield make_choice_batch(vocab, [r["inputs"] for r in recs], [r["choices"] for r in recs],
                                [r["label"] for r in recs], [0] * b, input_length, target_length)
      else:
        yield make_batch(vocab, [r["inputs"] for r in recs], [r["targets"] for r in recs],
                         [0] * b, input_length, target_length)


def eval_examples(task: str, split: str, max_examples: Optional[int], *, prompts: str,
                  seed: int) -> list[dict]:
  """Evaluation examples of `task` (task id 0); with templates, one drawn per example by seed."""
  check_prompts(prompts)
  if prompts == "handwritten":
    examples = tasks.eval_examples(task, split, max_examples)
  else:
    raw = t0_templates.raw_records(task, split)[:max_examples]
    examples = t0_templates.templated(task, raw, np.random.default_rng([int(seed), 2]))
  return [{**ex, "task_id": 0} for ex in examples]
