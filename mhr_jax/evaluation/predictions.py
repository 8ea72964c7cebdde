"""Per-example predictions saved next to the results: one JSON line per example.

Each line: {"input", "target", "prediction", "score"} where, for multiple choice,
`target` is the correct choice, `prediction` the highest-scoring choice and `score`
its credit (1/0, or BIG-bench's target score of that choice), plus "choices" and
"choice_log_likelihoods"; for generation `target` lists every accepted answer,
`prediction` is the decoded text and `score` is 1 for an exact match (else 0), plus
"rouge_l" (0..1).
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from tasks import metrics


def multiple_choice_lines(examples: Sequence[Mapping], scores: Sequence[np.ndarray]) -> list[dict]:
  out = []
  for ex, s in zip(examples, scores):
    pred = int(np.argmax(s))
    credit = (ex["choice_scores"][pred] if "choice_scores" in ex
              else float(pred == int(ex["label"])))
    out.append({"input": ex["inputs"], "target": ex["choices"][int(ex["label"])],
                "prediction": ex["choices"][pred], "score": float(credit),
                "choices": list(ex["choices"]),
                "choice_log_likelihoods": [round(float(x), 4) for x in s]})
  return out


def generation_lines(examples: Sequence[Mapping], predictions: Sequence[str]) -> list[dict]:
  out = []
  for ex, p in zip(examples, predictions):
    refs = [ex["targets"]] if isinstance(ex["targets"], str) else list(ex["targets"])
    out.append({"input": ex["inputs"], "target": refs, "prediction": p,
                "score": float(any(p.strip() == r.strip() for r in refs)),
                "rouge_l": round(max(metrics.rouge_l_fmeasure(r, p) for r in refs), 4)})
  return out


def save_predictions(path: str, lines: Sequence[Mapping]) -> str:
  """Writes the lines as JSONL (via a temporary file, never half-written); returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(json.dumps(line, ensure_ascii=False) + "\n")
  os.replace(tmp, path)
  return path


def predictions_path(stage_dir: str, task: str, seed: int) -> str:
  """Where a stage saves one task x seed's predictions."""
  return os.path.join(stage_dir, "predictions", f"{task}_s{int(seed)}.jsonl")
