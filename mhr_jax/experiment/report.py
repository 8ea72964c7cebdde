"""The closing lines a stage prints: what it did and where its outputs are."""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Sequence

log = logging.getLogger(__name__)


def average_line(summary: Optional[Mapping]) -> str:
  """'accuracy 41.20 ± 1.10, ... (± std over 3 seeds)' from a results summary's 'average' row.

  The ± is the standard deviation of the per-seed means (not the 95 % interval the
  pipeline's final table prints), and the line says so.
  """
  avg = (summary or {}).get("average", {})
  if not avg:
    return ""
  n = max(v.get("n", 1) for v in avg.values())
  if n == 1:  # one seed (a zero-shot or eval stage): no spread to print
    return ", ".join(f"{k} {v['mean']:.2f}" for k, v in sorted(avg.items())) + " (one seed)"
  line = ", ".join(f"{k} {v['mean']:.2f} ± {v['std']:.2f}" for k, v in sorted(avg.items()))
  return f"{line} (± std over {n} seeds)"


def stage_summary(title: str, facts: Sequence[str], outputs: Mapping[str, str]) -> str:
  """Prints (and returns) a short block: the stage, its facts, then one line per output path.

  Outputs that do not exist are left out (e.g. no routing picture for an unrouted method).
  """
  lines = [f"== {title} done: " + "; ".join(f for f in facts if f)]
  width = max((len(k) for k in outputs), default=0)
  for name, path in outputs.items():
    if path and os.path.exists(path):
      lines.append(f"   {name:<{width}}  {path}")
  text = "\n".join(lines)
  print(text, flush=True)
  return text


def train_facts(steps: int, seconds: float, history: Sequence[Mapping]) -> list[str]:
  """'300 steps in 95 s (3.2 steps/s)', 'final loss 2.314'."""
  facts = [f"{steps} steps in {seconds:.0f} s ({steps / max(seconds, 1e-9):.2f} steps/s overall)"]
  if history:
    facts.append(f"final loss {history[-1]['loss']:.4f}")
  return facts
