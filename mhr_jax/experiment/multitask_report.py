"""What the pipeline reports about its multi-task stage: training-task exact match, routing recovery.

Training-task exact match says whether pre-training learned the tasks it was
trained on (each task evaluated with its own routing row); the routing
recovery score (`mhr_jax.evaluation.routing_recovery`) says whether the
learned routing knows which tasks share skills, where the family has a
ground truth.
"""

from __future__ import annotations

import json
import logging
import os

import gin

from mhr_jax.evaluation import routing_recovery
from mhr_jax.evaluation.results import write_atomic
from mhr_jax.experiment import stages

log = logging.getLogger(__name__)


@gin.configurable(denylist=["output_dir"])
def multitask_report(output_dir: str, *, train_task_eval: bool = False,
                     recovery: bool = True, n_permutations: int = 1000) -> tuple[dict, str]:
  """Evaluates the multi-task checkpoint of `output_dir`; returns (numbers, Markdown lines).

  train_task_eval: run `stages.evaluate_checkpoint` (its gin settings: split,
    examples per task) on the training tasks; off by default because not every
    family has a split to evaluate its training tasks on (P3 and SNI training
    tasks have only 'train'); configs/experiments/synthetic.gin turns it on.
  recovery: score the routing against the family's ground truth, if any.
  """
  numbers, lines = {}, []
  if train_task_eval:
    summary = stages.evaluate_checkpoint(output_dir)
    per_task = [ms["exact_match"]["mean"] for t, ms in summary.items()
                if t != "average" and "exact_match" in ms]
    if per_task:
      numbers["train_exact_match"] = summary["average"]["exact_match"]["mean"]
      numbers["train_exact_match_min"] = min(per_task)
      lines.append(f"Training tasks after multi-task pre-training (own routing row): exact "
                   f"match {numbers['train_exact_match']:.2f} % averaged over "
                   f"{len(per_task)} tasks, lowest task {min(per_task):.2f} % "
                   f"({os.path.join(output_dir, 'eval', 'results.md')})")
  if recovery:
    stage_dir = os.path.join(output_dir, "multitask")
    score = routing_recovery.score_multitask_stage(stage_dir, n_permutations=n_permutations)
    if score is not None:
      numbers["routing_recovery"] = score
      lines.append(routing_recovery.format_score(score).capitalize() +
                   f"; ground truth next to learned routing: "
                   f"{os.path.join(stage_dir, 'routing_recovery.png')}")
  for line in lines:
    log.info("%s", line)
  write_atomic(os.path.join(output_dir, "multitask_report.json"), json.dumps(numbers, indent=1))
  return numbers, "\n".join(f"- {l}" for l in lines) + ("\n" if lines else "")
