"""Every method on the synthetic compositional benchmark -> docs/RESULTS.md.

Methods that share a multi-task stage (see each `configs/methods/*.gin`) are
run as one pipeline: one pre-training, then each method's few-shot
adaptation to every held-out task for every seed. The groups with the
method files' settings:

  full         -> lora, ia3, full   (backbone pre-trained alone, then a fresh
                                     adapter / full fine-tuning per task)
  shared_lora  -> shared_lora       (backbone + one LoRA for all tasks)
  shared_ia3   -> shared_ia3        (backbone + one (IA)^3 for all tasks)
  poly         -> poly, poly_z, poly_mu
  mhr          -> mhr, mhr_z, mhr_mu

Every μ method (poly_mu, mhr_mu) is also run as μ zero-shot (the averaged
adapter trained on the training tasks, no few-shot data; `--no_zero_shot`
skips it). The table reports held-out exact match (and Rouge-L), the mean over tasks
± its 95 % interval over seeds, and the parameters each method trains in
adaptation, plus a per-task table; the header records the exact command, the
commit and the machine. Every group's k of the main table runs first, then the
other shot counts (`--shots`) for the plot. Written atomically.

  python benchmarks/method_comparison.py                       # ~30 CPU-min at k=16 alone
  python benchmarks/method_comparison.py --methods mhr,poly --gin.adapt_heldout.seeds='(0,)'
  python benchmarks/method_comparison.py --multitask_seeds 1,2   # + 2 pre-trainings per group

`--multitask_seeds` repeats each group's multi-task stage with other
`train_multitask.seed` values (main k only) and adds a table of the spread
over pre-trainings: one pre-training's intervals do not hold its variance.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Mapping, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
EXPERIMENT = os.path.join(CONFIGS, "experiments", "synthetic.gin")
# Order of the rows: baselines first, then routing and its ablations.
ORDER = ("lora", "ia3", "full", "shared_lora", "shared_ia3", "poly", "poly_z", "poly_mu", "poly_mu zero-shot",
         "mhr", "mhr_z", "mhr_mu", "mhr_mu zero-shot")
DEFAULT_METHODS = tuple(m for m in ORDER if " " not in m)
# Everything below this line of an existing results file is hand-written
# discussion and is kept when the file is written again.
NOTES_MARKER = "<!-- notes below are written by hand and kept when this file is regenerated -->"


def kept_notes(path: str) -> str:
  """The hand-written part of an existing results file (from NOTES_MARKER on), or ''."""
  if not os.path.exists(path):
    return ""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  i = text.find(NOTES_MARKER)
  return "" if i < 0 else text[i:]


def method_file(method: str) -> str:
  return os.path.join(CONFIGS, "methods", f"{method}.gin")


def group_methods(methods: Sequence[str], overrides: Sequence[str] = ()) -> dict[str, list[str]]:
  """{multi-task method: [adaptation methods]} as the method config files say."""
  import gin  # pylint: disable=g-import-not-at-top
  from mhr_jax import gin_cli  # pylint: disable=g-import-not-at-top
  from mhr_jax.experiment import pipeline  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  groups: dict[str, list[str]] = {}
  for method in methods:
    gin.clear_config()
    gin_cli.parse([EXPERIMENT, method_file(method)], list(overrides), [CONFIGS, ROOT])
    groups.setdefault(gin.query_parameter("train_multitask.method"), []).append(method)
  gin.clear_config()
  return groups


def _cell(summary: Mapping, metric: str) -> str:
  from mhr_jax.evaluation.intervals import format_interval, task_average_interval  # pylint: disable=g-import-not-at-top
  return format_interval(task_average_interval(summary, metric))


def shots_plot(shots: Mapping[str, Mapping[int, Mapping]], path: str) -> str:
  """PNG: held-out exact match (± 95 % interval) against the number of shots, one line per method.

  shots: {method: {k: aggregate summary}}.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from mhr_jax.evaluation.intervals import task_average_interval  # pylint: disable=g-import-not-at-top
  from mhr_jax.evaluation.results import save_figure_atomic  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8, 4.5))
  colors = plt.get_cmap("tab20").colors
  for n, (method, by_k) in enumerate(shots.items()):
    ks = sorted(by_k)
    iv = [task_average_interval(by_k[k], "exact_match") for k in ks]
    routed = method.startswith(("poly", "mhr"))  # solid: routed; dashed: the baselines
    marker = "s" if method.endswith("_z") else "^" if method.endswith("_mu") else "o"
    ax.errorbar(ks, [i["mean"] for i in iv], yerr=[i["half_width"] for i in iv], marker=marker,
                capsize=3, label=method, color=colors[(2 * n) % 20 + (2 * n) // 20],
                linestyle="-" if routed else "--")
  ax.set_xscale("log", base=2)
  ax.set_xticks(sorted({k for by_k in shots.values() for k in by_k}))
  ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.set_xlabel("shots (training examples of the held-out task)")
  ax.set_ylabel("held-out exact match (%)")
  ax.set_title("Synthetic benchmark: few-shot adaptation (95 % intervals)")
  ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return save_figure_atomic(fig, path)


def results_markdown(summaries: Mapping[str, Mapping], groups: Mapping[str, Sequence[str]],
                     *, command: str, machine: Mapping, commit: str, settings: Mapping,
                     wall_s: Mapping[str, float], multitask: Mapping[str, Mapping] = {},
                     shots: Mapping[str, Mapping[int, Mapping]] = {},
                     shots_png: str = "", trainable: Mapping[str, int] = {},
                     cpu_s: Mapping[str, float] = {},
                     spread: Mapping[str, Mapping[int, Mapping]] = {},
                     spread_multitask: Mapping[str, Mapping[int, Mapping]] = {}) -> str:
  """docs/RESULTS.md: the method table, a per-task table and how it was made.

  summaries: {method: {task: {metric: {mean, std, n}}, 'average': {...}}} as
  `mhr_jax.evaluation.results.aggregate` returns.
  trainable: {method: parameters trained in adaptation} (a column when given).
  cpu_s: {multi-task stage: CPU seconds of the process} (a column when given).
  spread: {method: {multi-task seed: summary at the main k}} (a section when given);
  spread_multitask: {multi-task stage: {seed: its multitask_report.json}}.
  """
  methods = [m for m in ORDER if m in summaries] + [m for m in summaries if m not in ORDER]
  pretrain = {m: g for g, ms in groups.items() for m in ms}
  pretrain.update({f"{m} zero-shot": g for m, g in list(pretrain.items())})
  ranked = sorted(methods, key=lambda m: -summaries[m]["average"]["exact_match"]["mean"])
  lines = [
      "# Results: methods on the synthetic compositional benchmark", "",
      "Few-shot adaptation to the 8 held-out skill compositions after multi-task "
      "pre-training on the 24 training compositions (`configs/experiments/synthetic.gin`). "
      "Exact match and Rouge-L in %, on each held-out task's test split; each cell is the "
      "mean over tasks ± its 95 % interval over seeds (tasks fixed; "
      "`mhr_jax.evaluation.intervals`).", "",
      f"Command: `{command}`  ",
      f"Commit: `{commit}`  ",
      f"Machine: {machine.get('cpu_model') or machine.get('processor', '?')}, {machine.get('cpu_count', '?')} cores, "
      f"{machine.get('memory_gib', '?')} GiB, JAX {machine.get('jax', '?')} "
      f"({machine.get('jax_backend', '?')}), {machine.get('date', '?')}  ",
      "Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()), "",
      "| method | multi-task stage | exact match | Rouge-L | seeds |"
      + (" trainable params (adaptation) |" if trainable else ""),
      "|---|---|---:|---:|---:|" + ("---:|" if trainable else ""),
  ]
  for m in methods:
    avg = summaries[m]["average"]
    n_params = (f" {trainable[m]:,} |" if m in trainable else " |") if trainable else ""
    lines.append(f"| {m} | {pretrain.get(m, '?')} | {_cell(summaries[m], 'exact_match')} | "
                 f"{_cell(summaries[m], 'rouge_l')} | {avg['exact_match']['n']} |{n_params}")
  lines += ["", "Ordering by exact match: " + " > ".join(ranked) + ".", ""]
  if multitask:
    lines += ["## Multi-task stage: training tasks and routing recovery", "",
              "| multi-task stage | training-task exact match (lowest task) | routing recovery "
              "(mean over heads / all heads) | permutation baseline (mean ± std, 95th pct) |",
              "|---|---:|---:|---:|"]
    for g, nums in multitask.items():
      em = (f"{nums['train_exact_match']:.2f} ({nums['train_exact_match_min']:.2f})"
            if "train_exact_match" in nums else "")
      rec = nums.get("routing_recovery")
      rec_s = f"{rec['mean_over_heads']:.3f} / {rec['all_heads']:.3f}" if rec else "(not routed)"
      perm = (f"{rec['permutation']['mean']:.3f} ± {rec['permutation']['std']:.3f}, "
              f"{rec['permutation']['q95']:.3f}" if rec else "")
      lines.append(f"| {g} | {em} | {rec_s} | {perm} |")
    lines.append("")
  if spread:
    lines += _spread_lines(spread, spread_multitask, settings.get("adapt_heldout.k", "?"))
  if shots:
    ks = sorted({k for by_k in shots.values() for k in by_k})
    lines += ["## Exact match against the number of shots", "",
              f"![held-out exact match vs shots]({os.path.basename(shots_png)})", "",
              "| method | " + " | ".join(f"k = {k}" for k in ks) + " |",
              "|---|" + "---:|" * len(ks)]
    for m, by_k in shots.items():
      lines.append(f"| {m} | " + " | ".join(_cell(by_k[k], "exact_match") if k in by_k else ""
                                            for k in ks) + " |")
    lines.append("")
  lines += [
            "## Per task (exact match, mean over seeds)", "",
            "| task | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
  tasks = sorted({t for m in methods for t in summaries[m] if t != "average"})
  for t in tasks:
    cells = [f"{summaries[m][t]['exact_match']['mean']:.1f}" if t in summaries[m] else ""
             for m in methods]
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
  lines += ["", "## Time per multi-task group (its pre-trainings, adaptations, zero-shot, shots)", "",
            "| multi-task stage | adaptation methods | wall s |" + (" CPU s |" if cpu_s else ""),
            "|---|---|---:|" + ("---:|" if cpu_s else "")]
  for g, ms in groups.items():
    cpu = f" {cpu_s.get(g, float('nan')):.0f} |" if cpu_s else ""
    lines.append(f"| {g} | {', '.join(ms)} | {wall_s.get(g, float('nan')):.0f} |{cpu}")
  return "\n".join(lines) + "\n"


def _spread_lines(spread: Mapping[str, Mapping[int, Mapping]],
                  spread_multitask: Mapping[str, Mapping[int, Mapping]], k) -> list[str]:
  """The section on how much the numbers move with the multi-task pre-training."""
  from mhr_jax.evaluation.intervals import (format_interval, runs_interval,  # pylint: disable=g-import-not-at-top
                                            task_average_interval)
  seeds = sorted({s for by_seed in spread.values() for s in by_seed})
  lines = ["## Spread over multi-task pre-trainings", "",
           f"Held-out exact match at k = {k}. Each seed column is one multi-task pre-training "
           "(`train_multitask.seed`: initial weights and data order) followed by the same "
           "adaptation seeds; the main table is the first column. The last column is the mean "
           "over pre-trainings ± its 95 % interval (Student's t, one value per pre-training): "
           "it holds the variance of pre-training, which the intervals above (adaptation seeds "
           "of one pre-training) do not.", "",
           "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± 95 % |",
           "|---|" + "---:|" * (len(seeds) + 1)]
  for m in [m for m in ORDER if m in spread] + [m for m in spread if m not in ORDER]:
    means = {s: task_average_interval(spread[m][s], "exact_match")["mean"] for s in spread[m]}
    lines.append(f"| {m} | " + " | ".join(f"{means[s]:.2f}" if s in means else "" for s in seeds)
                 + f" | {format_interval(runs_interval(list(means.values())))} |")
  routed = {g: r for g, r in spread_multitask.items()
            if any(rep.get("routing_recovery") for rep in r.values())}
  if routed:
    lines += ["", "| multi-task stage | " + " | ".join(
        f"seed {s}: training EM / routing recovery" for s in seeds) + " |",
              "|---|" + "---:|" * len(seeds)]
    for g, by_seed in routed.items():
      cells = [f"{by_seed[s]['train_exact_match']:.2f} / "
               f"{by_seed[s]['routing_recovery']['mean_over_heads']:.3f}"
               if by_seed.get(s, {}).get("routing_recovery") else "" for s in seeds]
      lines.append(f"| {g} | " + " | ".join(cells) + " |")
  return lines + [""]


def _reuse(path: str, key: Mapping) -> Optional[dict]:
  """The results saved at `path` if they were made with `key` from committed code, else None."""
  if "+" in key["code"] or not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  return saved["done"] if saved.get("key") == json.loads(json.dumps(key)) else None


def _save_done(path: str, key: Mapping, done: Mapping) -> None:
  from mhr_jax.evaluation.results import write_atomic  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_atomic(path, json.dumps({"key": key, "done": done}, indent=1))


def _from_units(group_dir: str, code: str, overrides: Sequence[str], adapt: Sequence[str],
                zero_shot: Sequence[str], main_k: int) -> Optional[dict]:
  """A group's results assembled from `--units_only` runs, if every unit and the multi-task
  report are there (else None): the same stages the pipeline runs, in separate processes."""
  report = os.path.join(group_dir, "multitask_report.json")
  units = {m: _reuse(os.path.join(group_dir, f"k{main_k}", f"adapt_{m}", "comparison.json"),
                     {"code": code, "overrides": overrides, "method": m, "k": main_k})
           for m in adapt}
  units.update({f"{m} zero-shot": _reuse(
      os.path.join(group_dir, "units", f"zero_shot_{m}", "comparison.json"),
      {"code": code, "overrides": overrides, "zero_shot": m}) for m in zero_shot})
  if not os.path.exists(report) or any(u is None for u in units.values()):
    return None
  with open(report, encoding="utf-8") as f:
    done = {"multitask": json.load(f)}
  done["summaries"] = {m: u["summary"] for m, u in units.items()}
  done["trainable"] = trainable_parameters(adapt, zero_shot, os.path.join(group_dir, "multitask"))
  done.update(wall_s=sum(u["wall_s"] for u in units.values()),
              cpu_s=sum(u["cpu_s"] for u in units.values()))
  return done


def trainable_parameters(adapt: Sequence[str], zero_shot: Sequence[str],
                         multitask_dir: str) -> dict[str, int]:
  """{method: number of parameters it trains in adaptation} from the multi-task checkpoint.

  A zero-shot row ('<m> zero-shot', m in `zero_shot`, also in `adapt`) counts as method m.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from mhr_jax.adapters import methods as methods_lib  # pylint: disable=g-import-not-at-top
  from mhr_jax.experiment import stages  # pylint: disable=g-import-not-at-top
  _, mt_adapter, mt_params, _ = stages.load_multitask(multitask_dir)
  counts = {}
  for m in adapt:
    _, params = methods_lib.init_adaptation_params(m, mt_params, mt_adapter,
                                                   rng=jax.random.PRNGKey(0))
    counts[m] = methods_lib.count_parameters(params, methods_lib.trainable_predicate(m, "adapt"))
  counts.update({f"{m} zero-shot": counts[m] for m in zero_shot})
  return counts


def _multitask_seed() -> int:
  """train_multitask.seed as gin is configured (its default when unbound)."""
  import gin  # pylint: disable=g-import-not-at-top
  from mhr_jax.experiment import stages  # pylint: disable=g-import-not-at-top
  try:
    return int(gin.query_parameter("train_multitask.seed"))
  except ValueError:
    return inspect.signature(stages.train_multitask).parameters["seed"].default


def _run_group(group_dir: str, key: Mapping, adapt: Sequence[str],
               zero_shot: Sequence[str]) -> dict:
  """Runs the pipeline gin is configured for (one group) and saves what the table needs."""
  from mhr_jax.experiment import pipeline  # pylint: disable=g-import-not-at-top
  t0, c0 = time.time(), time.process_time()
  done = {"summaries": pipeline.run()}
  report = os.path.join(group_dir, "multitask_report.json")
  if os.path.exists(report):
    with open(report, encoding="utf-8") as f:
      done["multitask"] = json.load(f)
  done["trainable"] = trainable_parameters(adapt, zero_shot, os.path.join(group_dir, "multitask"))
  done.update(wall_s=time.time() - t0, cpu_s=time.process_time() - c0)
  _save_done(os.path.join(group_dir, "comparison.json"), key, done)
  return done


# What the numbers depend on: a re-run reuses saved results only if these are unchanged.
CODE_PATHS = ("mhr_jax", "tasks", "configs")


def _code_version() -> str:
  """Git tree ids of CODE_PATHS, or '+uncommitted changes' (never reused) when they differ."""
  try:
    trees = subprocess.run(["git", "rev-parse"] + [f"HEAD:{p}" for p in CODE_PATHS], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *CODE_PATHS], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    return ",".join(t[:12] for t in trees) + ("+uncommitted changes" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "+unknown"


def _commit() -> str:
  try:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    return sha + ("+uncommitted changes" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                      help="comma-separated methods (default: all ten)")
  parser.add_argument("--output_dir", default="results/method_comparison")
  parser.add_argument("--results", default=os.path.join(ROOT, "docs", "RESULTS.md"),
                      help="the Markdown file to write")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  parser.add_argument("--shots", default="4,16,64",
                      help="comma-separated few-shot k for the shots plot ('' skips it); the "
                      "k of the main table is reused")
  parser.add_argument("--shots_methods", default="",
                      help="comma-separated methods run at the other shot counts (default: all)")
  parser.add_argument("--shots_only", action="store_true",
                      help="only the other shot counts, from finished multi-task stages; saved "
                      "for a later full run over the same --output_dir, which reuses them")
  parser.add_argument("--units_only", action="store_true",
                      help="as --shots_only, but every shot count of --shots (the main k too) "
                      "and the zero-shot runs of the --shots_methods: a group's adaptations "
                      "split over several processes; a later full run assembles them")
  parser.add_argument("--multitask_seeds", default="",
                      help="comma-separated further train_multitask.seed values: each repeats "
                      "its group's multi-task stage and the main k's adaptation (no zero-shot, "
                      "no other shots) for a table of the spread over multi-task runs")
  parser.add_argument("--multitask_seed_methods", default="",
                      help="comma-separated methods repeated for --multitask_seeds (default: all)")
  parser.add_argument("--no_zero_shot", action="store_true",
                      help="skip μ zero-shot (run for every *_mu method by default)")
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for a in rest:
    if not a.startswith("--gin."):
      parser.error(f"unrecognised argument {a!r}; gin overrides look like --gin.NAME=VALUE")
    overrides.append(a[len("--gin."):])
  methods = [m for m in args.methods.split(",") if m]
  # A re-run over the same --output_dir resumes each finished multi-task stage
  # from its last checkpoint (no steps left), and reuses every finished group and
  # shot count whose commit (clean), overrides and methods are the same
  # (`_reuse`): separate invocations can fill one output_dir side by side.

  import gin  # pylint: disable=g-import-not-at-top
  from mhr_jax import gin_cli  # pylint: disable=g-import-not-at-top
  from mhr_jax.adapters.methods import METHODS  # pylint: disable=g-import-not-at-top
  from mhr_jax.evaluation.results import write_atomic  # pylint: disable=g-import-not-at-top
  from mhr_jax.experiment import stages  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    parser.error(f"unknown method(s) {unknown}; valid choices: {sorted(METHODS)}")

  commit, code = _commit(), _code_version()  # before the runs: the code they ran
  groups = group_methods(methods, overrides)
  summaries, wall, cpu, settings, multitask, shots, trainable = {}, {}, {}, {}, {}, {}, {}
  ks = [int(k) for k in args.shots.split(",") if k]
  more_seeds = [int(x) for x in args.multitask_seeds.split(",") if x]
  shots_methods = [m for m in args.shots_methods.split(",") if m] or methods
  quiet = ["train_multitask.show_progress = False", "adapt_heldout.show_progress = False"]
  configs, main_seeds = {}, {}  # per group: its gin configuration, its train_multitask.seed
  for multitask_method, adapt in groups.items():
    zero_shot = [] if args.no_zero_shot else [m for m in adapt if m.endswith("_mu")]
    bindings = overrides + (quiet if args.quiet else []) + [
        f"run.output_dir = '{os.path.join(args.output_dir, multitask_method)}'",
        "run.stage = 'pipeline'", f"run.adapt_methods = {adapt!r}",
        f"run.zero_shot_methods = {zero_shot!r}"]
    configs[multitask_method] = ([EXPERIMENT, method_file(adapt[0])], bindings)
    gin.clear_config()
    gin_cli.parse(*configs[multitask_method], [CONFIGS, ROOT])
    settings = {name: gin.query_parameter(name) for name in (
        "train_multitask.steps", "adapt_heldout.k", "adapt_heldout.steps",
        "adapt_heldout.seeds", "adapt_heldout.max_eval_examples")}
    if zero_shot:
      settings["mu_zero_shot.steps"] = gin.query_parameter("mu_zero_shot.steps")
    main_seeds[multitask_method] = _multitask_seed()
    if main_seeds[multitask_method] in more_seeds:
      parser.error(f"--multitask_seeds {args.multitask_seeds} repeats the main run's "
                   f"train_multitask.seed = {main_seeds[multitask_method]}; give other seeds")
    group_dir = os.path.join(args.output_dir, multitask_method)
    key = {"code": code, "overrides": overrides, "adapt": adapt, "zero_shot": zero_shot}
    if args.shots_only or args.units_only:
      continue
    done = (_reuse(os.path.join(group_dir, "comparison.json"), key)
            or _from_units(group_dir, code, overrides, adapt, zero_shot,
                           gin.query_parameter("adapt_heldout.k"))
            or _run_group(group_dir, key, adapt, zero_shot))
    summaries.update(done["summaries"])
    if "multitask" in done:
      multitask[multitask_method] = done["multitask"]
    trainable.update(done["trainable"])
    wall[multitask_method], cpu[multitask_method] = done["wall_s"], done["cpu_s"]
  # Repeats of the multi-task stage (other train_multitask.seed), main k only.
  spread, spread_multitask = {}, {}
  seed_methods = [m for m in args.multitask_seed_methods.split(",") if m] or methods
  for seed in ([] if args.shots_only or args.units_only else more_seeds):
    for multitask_method, adapt in groups.items():
      adapt = [m for m in adapt if m in seed_methods]
      if not adapt:
        continue
      group_dir = os.path.join(args.output_dir, f"multitask_seed{seed}", multitask_method)
      gin.clear_config()
      gin_cli.parse(configs[multitask_method][0], configs[multitask_method][1] + [
          f"run.output_dir = '{group_dir}'", f"run.adapt_methods = {adapt!r}",
          "run.zero_shot_methods = []", f"train_multitask.seed = {seed}"], [CONFIGS, ROOT])
      key = {"code": code, "overrides": overrides, "adapt": adapt, "multitask_seed": seed}
      done = (_reuse(os.path.join(group_dir, "comparison.json"), key)
              or _run_group(group_dir, key, adapt, []))
      main_seed = main_seeds[multitask_method]
      for m in adapt:
        spread.setdefault(m, {main_seed: summaries[m]})[seed] = done["summaries"][m]
      runs = spread_multitask.setdefault(multitask_method,
                                         {main_seed: multitask.get(multitask_method, {})})
      runs[seed] = done.get("multitask", {})
      wall[multitask_method] = wall.get(multitask_method, 0.0) + done["wall_s"]
      cpu[multitask_method] = cpu.get(multitask_method, 0.0) + done["cpu_s"]
  # The other shot counts after every group's main table (the plot is the extra).
  for multitask_method, adapt in groups.items():
    gin.clear_config()
    gin_cli.parse(*configs[multitask_method], [CONFIGS, ROOT])
    group_dir = os.path.join(args.output_dir, multitask_method)
    main_k = gin.query_parameter("adapt_heldout.k")
    for m in adapt:
      if m not in shots_methods:
        continue
      for k in ks:
        if k == main_k and not args.units_only:
          if m in summaries:
            shots.setdefault(m, {})[k] = summaries[m]
          continue
        path = os.path.join(group_dir, f"k{k}", f"adapt_{m}", "comparison.json")
        key = {"code": code, "overrides": overrides, "method": m, "k": k}
        done = _reuse(path, key)
        if done is None:
          t0, c0 = time.time(), time.process_time()
          done = {"summary": stages.adapt_heldout(
              os.path.join(group_dir, f"k{k}"), method=m, k=k,
              multitask_dir=os.path.join(group_dir, "multitask"))}
          done.update(wall_s=time.time() - t0, cpu_s=time.process_time() - c0)
          _save_done(path, key, done)
        shots.setdefault(m, {})[k] = done["summary"]
        wall[multitask_method] = wall.get(multitask_method, 0.0) + done["wall_s"]
        cpu[multitask_method] = cpu.get(multitask_method, 0.0) + done["cpu_s"]
      if args.units_only and m.endswith("_mu") and not args.no_zero_shot:
        path = os.path.join(group_dir, "units", f"zero_shot_{m}", "comparison.json")
        key = {"code": code, "overrides": overrides, "zero_shot": m}
        if _reuse(path, key) is None:
          t0, c0 = time.time(), time.process_time()
          done = {"summary": stages.mu_zero_shot(os.path.join(group_dir, "units"), method=m,
                                                 multitask_dir=os.path.join(group_dir, "multitask"))}
          done.update(wall_s=time.time() - t0, cpu_s=time.process_time() - c0)
          _save_done(path, key, done)
  gin.clear_config()
  if args.shots_only or args.units_only:
    print(f"saved the other shot counts under {args.output_dir}")
    return 0
  command = "python benchmarks/method_comparison.py " + " ".join(shlex.quote(a) for a in argv)
  shots_png = os.path.join(os.path.dirname(os.path.abspath(args.results)), "shots.png")
  if shots:
    shots_plot(shots, shots_png)
  text = results_markdown(summaries, groups, command=command.strip(),
                          machine={**common.machine_info(), "cpu_count": os.cpu_count()},
                          commit=commit, settings=settings, wall_s=wall, multitask=multitask,
                          shots=shots, shots_png=shots_png, trainable=trainable, cpu_s=cpu,
                          spread=spread, spread_multitask=spread_multitask)
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  notes = kept_notes(args.results)
  write_atomic(args.results, text + ("\n" + notes if notes else ""))
  write_atomic(os.path.join(args.output_dir, "summaries.json"), json.dumps(summaries, indent=1))
  print(text)
  print(f"wrote {args.results}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
