"""Super-NaturalInstructions from a local clone of allenai/natural-instructions.

Expected layout (`data_dir`, default $MHR_JAX_NI_DIR or
~/.cache/mhr_jax/natural-instructions):

  tasks/<task>.json                  Definition, Positive Examples, Instances, ...
  splits/default/train_tasks.txt     training task names (one per line)
  splits/default/test_tasks.txt      held-out task names

Prompt (Tk-Instruct style, `num_positive` demonstrations):

  Definition: <definition>

  Positive Example 1 -
  Input: <input>
  Output: <output>.

  Now complete the following example -
  Input: <instance input>
  Output:

Target: the instance's first output; every output counts at evaluation
(exact match, Rouge-L). Instances are split per task by
`tasks.splits.split_examples`; task ids: training tasks, then test tasks.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping, Optional

import seqio

from mhr_jax import errors
from mhr_jax.evaluation import metrics
from tasks import mixtures, registry, sources, splits

FAMILY = "natural_instructions"
TRAIN_MIXTURE = "natural_instructions_train"


def default_dir() -> str:
  return os.path.expanduser(os.environ.get(
      "MHR_JAX_NI_DIR", os.path.join("~", ".cache", "mhr_jax", "natural-instructions")))


def read_split(data_dir: str, split: str) -> list[str]:
  """Task names listed in splits/default/<split>_tasks.txt."""
  path = os.path.join(data_dir, "splits", "default", f"{split}_tasks.txt")
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def available(data_dir: Optional[str] = None) -> bool:
  data_dir = data_dir or default_dir()
  return all(os.path.isfile(os.path.join(data_dir, "splits", "default", f"{s}_tasks.txt"))
             for s in ("train", "test"))


def task_name(ni_task: str) -> str:
  return "ni_" + ni_task


def _text(value: Any) -> str:
  return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def format_prompt(task: Mapping[str, Any], instance_input: str, num_positive: int = 2) -> str:
  """The Tk-Instruct prompt: definition, `num_positive` demonstrations, the instance."""
  parts = [f"Definition: {_text(task.get('Definition', '')).strip()}\n\n"]
  for i, ex in enumerate(task.get("Positive Examples", [])[:num_positive]):
    output = _text(ex["output"]).strip()
    if not output.endswith("."):
      output += "."
    parts.append(f"Positive Example {i + 1} -\nInput: {_text(ex['input']).strip()}\n"
                 f"Output: {output}\n\n")
  parts.append(f"Now complete the following example -\nInput: {instance_input.strip()}\nOutput:")
  return "".join(parts)


def parse_task(task: Mapping[str, Any], num_positive: int = 2) -> list[dict]:
  """Generative records (inputs, targets, answers) of a task's instances."""
  records = []
  for inst in task.get("Instances", []):
    outputs = inst["output"] if isinstance(inst["output"], list) else [inst["output"]]
    outputs = [str(o) for o in outputs]
    if outputs:
      records.append(sources.generative_record(
          format_prompt(task, _text(inst["input"]), num_positive), outputs))
  return records


@functools.lru_cache(maxsize=16)
def load_splits(data_dir: str, ni_task: str, num_positive: int) -> dict[str, list]:
  with open(os.path.join(data_dir, "tasks", f"{ni_task}.json"), encoding="utf-8") as f:
    records = parse_task(json.load(f), num_positive)
  return splits.split_examples(task_name(ni_task), records)


def _load_split(data_dir: str, ni_task: str, num_positive: int, split: str) -> list[dict]:
  return load_splits(data_dir, ni_task, num_positive)[split]


def register_natural_instructions(data_dir: Optional[str] = None,
                                  vocabulary: Optional[seqio.Vocabulary] = None,
                                  num_positive: int = 2, cap: int = 1000) -> registry.Family:
  """Registers `ni_<task>` for the default train and test tasks, and `natural_instructions_train`
  (rates: training examples, counted lazily, capped at `cap`)."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_dir()))
  if not available(data_dir):
    raise errors.MissingInputError(
        f"no Super-NaturalInstructions clone at {data_dir!r} (need "
        "splits/default/{train,test}_tasks.txt and tasks/*.json); pass "
        "data_dir or set $MHR_JAX_NI_DIR")
  registry.remove_family(FAMILY)
  train, test = read_split(data_dir, "train"), read_split(data_dir, "test")
  present = lambda t: os.path.isfile(os.path.join(data_dir, "tasks", f"{t}.json"))
  train, test = [t for t in train if present(t)], [t for t in test if present(t)]
  for task_id, ni_task in enumerate(train + test):
    registry.add_task(registry.TaskSpec(
        name=task_name(ni_task), family=FAMILY,
        role="train" if task_id < len(train) else "heldout", kind=sources.GENERATIVE,
        source=sources.records_source(
            functools.partial(_load_split, data_dir, ni_task, num_positive), sources.GENERATIVE),
        task_id=task_id, metric_fns=(metrics.generation_metrics,),
        metric_names=("exact_match", "rouge_l")), vocabulary=vocabulary)
  fam = registry.Family(FAMILY, [task_name(t) for t in train], [task_name(t) for t in test],
                        TRAIN_MIXTURE if train else None,
                        sequence_length={"inputs": 1024, "targets": 128})
  registry.set_family(fam)
  if train:
    mixtures.register_mixture(TRAIN_MIXTURE, FAMILY, fam.train_tasks, scheme="proportional",
                              cap=cap)
  return fam
