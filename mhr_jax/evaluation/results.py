"""Results: per-task metrics aggregated over seeds, saved as JSON and Markdown."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` via a temp file + rename (never half-written)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def save_figure_atomic(fig, path: str) -> str:
  """Saves a matplotlib figure as PNG via a temp file + rename, closes it; returns `path`."""
  # Deferred: pyplot costs ~1-2 s of start-up, and stages that plot nothing (adapt,
  # eval) import this module.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110, bbox_inches="tight")
  plt.close(fig)
  os.replace(tmp, path)
  return path


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
  """Records {'task', 'seed', metric: value, ...} -> {task: {metric: {mean, std, median, n}}}.

  Also adds an 'average' row: the mean over tasks of each task's seed-mean
  ('mean'), and the mean over tasks of each task's seed-median ('median':
  the paper's aggregation, mttl projects/mhr/utils/get_metrics.py).
  """
  by_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
  for r in records:
    for k, v in r.items():
      if k not in ("task", "seed") and isinstance(v, (int, float)):
        by_task[r["task"]][k].append(float(v))
  out = {t: {k: {"mean": float(np.mean(v)), "std": float(np.std(v)),
                 "median": float(np.median(v)), "n": len(v)}
             for k, v in ms.items()} for t, ms in sorted(by_task.items())}
  metrics = sorted({k for ms in out.values() for k in ms})
  avg = {}
  for k in metrics:
    vals = [ms[k]["mean"] for ms in out.values() if k in ms]
    # Std over seeds of the task-averaged score.
    seeds = defaultdict(list)
    for r in records:
      if k in r:
        seeds[r.get("seed", 0)].append(float(r[k]))
    per_seed = [np.mean(v) for v in seeds.values()]
    medians = [ms[k]["median"] for ms in out.values() if k in ms]
    avg[k] = {"mean": float(np.mean(vals)), "std": float(np.std(per_seed)),
              "median": float(np.mean(medians)), "n": len(per_seed)}
  out["average"] = avg
  return out


def markdown_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]],
                   title: str = "") -> str:
  """A Markdown table: one row per task, one column per metric, 'mean ± std' ('value' of one seed)."""
  metrics = sorted({k for ms in summary.values() for k in ms})
  lines = [f"### {title}", ""] if title else []
  lines.append("| task | " + " | ".join(metrics) + " |")
  lines.append("|---|" + "---|" * len(metrics))
  for task, ms in summary.items():
    cells = []
    for k in metrics:
      if k in ms and ms[k].get("n") == 1:  # one seed: no spread to show
        cells.append(f"{ms[k]['mean']:.2f}")
      elif k in ms:
        cells.append(f"{ms[k]['mean']:.2f} ± {ms[k]['std']:.2f}")
      else:
        cells.append("")
    name = f"**{task}**" if task == "average" else task
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  avg = summary.get("average", {})
  medians = [f"{k} {avg[k]['median']:.2f}" for k in metrics if "median" in avg.get(k, {})]
  if medians:
    lines += ["", "Median over seeds, then mean over tasks (the paper's aggregation): "
              + ", ".join(medians)]
  return "\n".join(lines) + "\n"


def save_results(directory: str, records: Sequence[Mapping[str, Any]], title: str = "") -> dict:
  """Writes results.json (records + summary) and results.md; returns the summary."""
  summary = aggregate(records)
  write_atomic(os.path.join(directory, "results.json"),
               json.dumps({"records": list(records), "summary": summary}, indent=2))
  write_atomic(os.path.join(directory, "results.md"), markdown_table(summary, title))
  return summary
