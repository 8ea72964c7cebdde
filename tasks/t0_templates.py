"""Promptsource templates for the T0 held-out tasks, applied as microsoft/mttl applied them.

mttl (tag mhr-camera-ready, dataloader/t0_dataset_readers.py `get_template(-1)`
and datamodule/t0_data_module.py `T0FinetuneDatasetWithTemplate`) draws, for
every example each time it is read, one template uniformly from the dataset's
promptsource templates with `metadata.original_task` (COPA: the first 8 of
them), both for the few-shot training examples and for evaluation; the answer
choices are the template's (`get_answer_choices_list`).

Templates and their jinja renderer come from the `promptsource` package
(0.2.3, pinned in requirements.txt). Its `templates` module needs only
jinja2 and yaml at import; its module-level `pkg_resources` (gone from
recent setuptools) and `pandas` (one unused helper) imports are given
stand-ins for the duration of that import when they are not installed.

Our TFDS records are renamed into the Hugging Face `datasets` schema the
templates read (`hf_example`). TFDS lacks two HF fields: HellaSwag's
`ctx_a`/`ctx_b` (we pass ctx_a = the whole context, ctx_b = ''; one of the
four HellaSwag templates reads them) and StoryCloze's four separate input
sentences (split from TFDS's context at sentence ends).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import random
import re
import sys
import types
from typing import Mapping, Sequence

import numpy as np

from tasks import registry, sources

# Our T0 held-out task -> promptsource (dataset, subset), as mttl's readers.
PROMPTSOURCE_DATASETS = {
    "t0_rte": ("super_glue", "rte"),
    "t0_cb": ("super_glue", "cb"),
    "t0_copa": ("super_glue", "copa"),
    "t0_wic": ("super_glue", "wic"),
    "t0_wsc": ("super_glue", "wsc.fixed"),
    "t0_anli_r1": ("anli", None),
    "t0_anli_r2": ("anli", None),
    "t0_anli_r3": ("anli", None),
    "t0_hellaswag": ("hellaswag", None),
    "t0_winogrande": ("winogrande", "winogrande_xl"),
    "t0_story_cloze": ("story_cloze", "2016"),
}
MAX_TEMPLATES = {"t0_copa": 8}  # mttl COPAReader.get_template: [:8]


@contextlib.contextmanager
def _import_stand_ins():
  """Temporary `pkg_resources` / `pandas` modules for promptsource's import, if missing."""
  added = []
  spec = importlib.util.find_spec("promptsource")
  if spec is None:
    raise ImportError("the promptsource package is not installed: pip install --no-deps "
                      "--ignore-requires-python promptsource==0.2.3 (see requirements.txt)")
  root = list(spec.submodule_search_locations)[0]
  if importlib.util.find_spec("pkg_resources") is None:
    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = lambda package, name: os.path.join(root, name)
    sys.modules["pkg_resources"] = shim
    added.append("pkg_resources")
  if importlib.util.find_spec("pandas") is None:
    sys.modules["pandas"] = types.ModuleType("pandas")
    added.append("pandas")
  try:
    yield
  finally:
    for name in added:
      sys.modules.pop(name, None)


@functools.lru_cache(maxsize=None)
def _templates_module():
  with _import_stand_ins():
    # Deferred: an optional dependency (requirements-nodeps.txt) that needs the stand-ins.
    from promptsource import templates  # pylint: disable=g-import-not-at-top
  return templates


def check_task(task: str) -> None:
  if task not in PROMPTSOURCE_DATASETS:
    raise ValueError(f"task {task!r} has no promptsource templates here; valid choices: "
                     f"{sorted(PROMPTSOURCE_DATASETS)}")


@functools.lru_cache(maxsize=None)
def original_task_templates(task: str) -> tuple:
  """The templates mttl samples from for `task`: promptsource's `original_task` ones."""
  check_task(task)
  dataset, subset = PROMPTSOURCE_DATASETS[task]
  collection = _templates_module().DatasetTemplates(dataset, subset)
  chosen = [collection[name] for name in collection.all_template_names
            if collection[name].metadata.original_task]
  return tuple(chosen[:MAX_TEMPLATES.get(task, len(chosen))])


def _story_sentences(context: str) -> list[str]:
  parts = [p for p in re.split(r"(?<=[.!?])\s+", context.strip()) if p]
  if len(parts) != 4:
    parts = [context.strip(), "", "", ""]
  return parts


def hf_example(task: str, record: Mapping) -> dict:
  """A TFDS record of `task` -> the HF `datasets` fields its templates read (label 0-based)."""
  ex = dict(record)
  if task.startswith("t0_anli"):
    ex["premise"] = ex.pop("context")
    ex.setdefault("reason", "")
  elif task == "t0_hellaswag":
    ex["ctx"] = ex["ctx_a"] = ex.pop("context")
    ex["ctx_b"] = ""
    ex["endings"] = [e.strip() for e in ex["endings"]]
  elif task == "t0_winogrande":
    ex["answer"] = str(int(ex["label"]) + 1)
  elif task == "t0_story_cloze":
    for i, s in enumerate(_story_sentences(ex.pop("context")), 1):
      ex[f"input_sentence_{i}"] = s
    ex["sentence_quiz1"], ex["sentence_quiz2"] = [e.strip() for e in ex["endings"]]
    ex["answer_right_ending"] = int(ex["label"])
    ex["label"] = int(ex["label"]) - 1  # TFDS story_cloze labels are 1-based
  ex["label"] = int(ex["label"])
  return ex


def raw_records(task: str, split: str) -> list[dict]:
  """`task`'s labelled examples of `split` in the HF schema (unformatted), cached."""
  check_task(task)
  return list(_raw_records(task, split))


@functools.lru_cache(maxsize=None)
def _raw_records(task: str, split: str) -> tuple:
  spec = registry.task_spec(task)
  ds = spec.source.get_dataset(split=split, shuffle=False)
  out = [hf_example(task, sources.numpy_to_record(ex)) for ex in ds.as_numpy_iterator()]
  return tuple(ex for ex in out if ex["label"] >= 0)


def apply_template(template, example: Mapping, seed: int) -> dict:
  """One example through one template -> a multiple-choice record (inputs, choices, label).

  Python's `random` (which some templates call) is seeded with `seed` for the
  call and restored afterwards.
  """
  state = random.getstate()
  random.seed(seed)
  try:
    rendered = template.apply(dict(example))
    choices = template.get_answer_choices_list(dict(example))
  finally:
    random.setstate(state)
  inputs = rendered[0] if rendered else ""
  if not choices:
    raise ValueError(f"template {template.name!r} gives no answer choices")
  return sources.multiple_choice_record(inputs, [c.strip() for c in choices], example["label"])


def templated(task: str, examples: Sequence[Mapping], rng: np.random.Generator) -> list[dict]:
  """Each example through a template drawn uniformly (by `rng`) from `task`'s templates."""
  templates = original_task_templates(task)
  picks = rng.integers(len(templates), size=len(examples))
  seeds = rng.integers(2**31 - 1, size=len(examples))
  return [apply_template(templates[int(i)], ex, int(s))
          for ex, i, s in zip(examples, picks, seeds)]
