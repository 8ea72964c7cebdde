"""`run`: the gin-configurable dispatcher over stages, and the full pipeline."""

from __future__ import annotations

import os
import time
from typing import Sequence

import gin

from mhr_jax.adapters.methods import METHODS
from mhr_jax.evaluation.intervals import format_interval, task_average_interval
from mhr_jax.evaluation.results import write_atomic
from mhr_jax.experiment import compile as compile_stage  # registers compile_steps with gin
from mhr_jax.experiment.compilation_cache import enable_compilation_cache
from mhr_jax.experiment import stages
from mhr_jax.experiment.multitask_report import multitask_report
from mhr_jax.experiment import run_lock, validation


def comparison_table(summaries: dict[str, dict]) -> str:
  """Markdown: one row per adaptation method, one column per metric (task average ± 95 % CI)."""
  metrics = sorted({m for s in summaries.values() for m in s.get("average", {})})
  lines = ["| method | " + " | ".join(f"{m} (95 % CI)" for m in metrics) + " |",
           "|---|" + "---|" * len(metrics)]
  for method, s in summaries.items():
    avg = s.get("average", {})
    cells = [format_interval(task_average_interval(s, m)) if m in avg else "" for m in metrics]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _result_tables(output_dir: str, adapt_methods, zero_shot_methods) -> list[str]:
  return ([os.path.join(output_dir, f"adapt_{m}", "results.md") for m in adapt_methods] +
          [os.path.join(output_dir, f"zero_shot_{m}", "results.md") for m in zero_shot_methods])


@gin.configurable
def run(stage: str = "pipeline", output_dir: str = "results/default",
        adapt_methods: Sequence[str] = ("mhr",),
        zero_shot_methods: Sequence[str] = (),
        baseline_methods: Sequence[str] = (),
        compilation_cache: bool = False) -> dict:
  """Runs one stage (or the pipeline) and returns its summary.

  Args:
    stage: one of `stages.STAGES` (multitask, adapt, zero_shot, eval,
      pipeline, compile: every jitted step compiled for a TPU topology, see
      experiment/compile.py).
    output_dir: where checkpoints, TensorBoard logs, plots and results go;
      the gin configuration in force is written to output_dir/config.gin.
    adapt_methods: adaptation methods run by `pipeline` after pre-training.
    zero_shot_methods: μ zero-shot runs (`stages.mu_zero_shot`: poly_mu, mhr_mu)
      by `pipeline` after the adaptations; the 'zero_shot' stage runs
      `mu_zero_shot`'s own `method`.
    baseline_methods: methods with a multi-task stage of their own (e.g.
      'shared_lora'), each pre-trained under `output_dir/<method>` and adapted
      by `pipeline` after the others, into the same table.
    compilation_cache: keep compiled steps on disk (experiment/compilation_cache.py;
      `run.py` passes True). Never for 'compile', whose report times the compiler.
  """
  validation.check_choice("stage", stage, stages.STAGES)
  for m in list(adapt_methods) + list(baseline_methods):
    validation.check_choice("method", m, METHODS)
  for m in zero_shot_methods:
    validation.check_choice("zero-shot method", m, stages.mu_methods())
  # Names, numbers and output_dir, before any model is built; then one run per output_dir.
  validation.check_run(stage, output_dir, adapt_methods, zero_shot_methods)
  run_lock.hold(output_dir)
  # The configuration this run reads (every binding after all overrides), t5x style.
  write_atomic(os.path.join(output_dir, "config.gin"), gin.config_str())
  t0 = time.time()
  if stage == "compile":
    return compile_stage.compile_steps(output_dir)
  if compilation_cache:
    enable_compilation_cache()
  with stages.restoring_once():
    return _run_stage(stage, output_dir, adapt_methods, zero_shot_methods, baseline_methods, t0)


def _run_stage(stage, output_dir, adapt_methods, zero_shot_methods, baseline_methods, t0):
  if stage == "multitask":
    return {"stage_dir": stages.train_multitask(output_dir)}
  if stage == "eval":
    return stages.evaluate_checkpoint(output_dir)
  if stage == "adapt":
    return stages.adapt_heldout(output_dir)
  if stage == "zero_shot":
    return stages.mu_zero_shot(output_dir)
  stages.train_multitask(output_dir)
  _, multitask_lines = multitask_report(output_dir)
  summaries = {m: stages.adapt_heldout(output_dir, method=m) for m in adapt_methods}
  summaries.update({f"{m} zero-shot": stages.mu_zero_shot(output_dir, method=m)
                    for m in zero_shot_methods})
  for m in baseline_methods:
    stages.train_multitask(os.path.join(output_dir, m), method=m)
    summaries[m] = stages.adapt_heldout(os.path.join(output_dir, m), method=m)
  table = comparison_table(summaries)
  elapsed = time.time() - t0
  tables = ", ".join(_result_tables(output_dir, adapt_methods, zero_shot_methods) +
                     [os.path.join(output_dir, m, f"adapt_{m}", "results.md")
                      for m in baseline_methods])
  report = (f"## Held-out few-shot results ({output_dir})\n\n{multitask_lines}\n{table}\n"
            "(mean over held-out tasks ± 95 % interval over seeds, tasks fixed)\n"
            f"Per-task tables: {tables}\n")
  heatmap = os.path.join(output_dir, "multitask", "routing.png")
  if os.path.exists(heatmap):  # routed methods only
    report += f"Routing heatmap: {heatmap}\n"
  report += f"Wall time: {elapsed:.0f} s\n"
  write_atomic(os.path.join(output_dir, "summary.md"), report)
  print("\n" + report)
  return summaries
