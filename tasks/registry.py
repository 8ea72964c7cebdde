"""Our tasks, mixtures and families, kept on top of seqio's global registries.

seqio stores Task objects with their vocabulary baked in. We keep each task's
declaration (`TaskSpec`) so that a family can be re-registered idempotently
and every task rebuilt with another vocabulary (`set_vocabulary`).

A *family* (synthetic, bigbench, t0, natural_instructions) groups training
tasks, held-out tasks and a training mixture; its task-id table numbers the
training tasks 0..n_train-1 and the held-out tasks after them.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from typing import Callable, Optional, Sequence, Union

import seqio

from mhr_jax import errors
from tasks import preprocessors, sources
from tasks.task_ids import make_table

log = logging.getLogger(__name__)

ROLES = ("train", "heldout", "fewshot")
Rate = Union[float, Callable[[seqio.Task], float]]


class UnknownNameError(KeyError):
  """An unknown task, mixture or family name; the message lists close matches."""

  def __init__(self, kind: str, name: str, valid: Sequence[str]):
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    hint = f"; did you mean one of {close}?" if close else ""
    shown = valid if len(valid) <= 20 else valid[:20] + [f"... ({len(valid)} in all)"]
    super().__init__(f"unknown {kind} {name!r}{hint} (registered: {shown})")
    self.close_matches = close

  def __str__(self) -> str:
    return self.args[0]


@dataclasses.dataclass
class TaskSpec:
  """Everything needed to (re)build one seqio.Task.

  format_preprocessors turn the source's raw examples into the record schema
  of `tasks.sources` (inputs, targets, and answers or choices + label).
  """
  name: str
  family: str
  role: str  # 'train' | 'heldout' | 'fewshot'
  kind: str  # sources.GENERATIVE | sources.MULTIPLE_CHOICE
  source: seqio.DataSource
  format_preprocessors: tuple = ()
  task_id: int = 0
  metric_fns: tuple = ()
  metric_names: tuple = ()
  parent: Optional[str] = None  # few-shot tasks: the task they subsample
  vocabulary: Optional[seqio.Vocabulary] = None
  # None for sources that shuffle their records themselves (sources.RecordsDataSource).
  shuffle_buffer_size: Optional[int] = None


@dataclasses.dataclass
class MixtureSpec:
  name: str
  family: str
  rates: tuple  # ((task name, rate), ...)
  # Builds the seqio.Mixture from (name, rates); None: seqio.Mixture itself. A family can
  # give a subclass with its own input pipeline (tasks.bigbench.mixture).
  factory: Optional[Callable[..., seqio.Mixture]] = None


@dataclasses.dataclass
class Family:
  """Training and held-out task names of one family, plus its training mixture."""
  name: str
  train_tasks: list
  heldout_tasks: list
  train_mixture: Optional[str] = None
  sequence_length: dict = dataclasses.field(
      default_factory=lambda: {"inputs": 512, "targets": 128})

  @property
  def table(self) -> dict[str, int]:
    return make_table(list(self.train_tasks) + list(self.heldout_tasks))


_TASKS: dict[str, TaskSpec] = {}
_MIXTURES: dict[str, MixtureSpec] = {}
_FAMILIES: dict[str, Family] = {}
_RECORDS: dict[tuple, list] = {}
# Families whose local data are missing: name prefix -> how to get them (a one-line error).
_MISSING: dict[str, str] = {}


def note_missing_data(prefix: str, message: str) -> None:
  """Names starting with `prefix` now fail with MissingInputError(message), not 'unknown'."""
  _MISSING[prefix] = message


def _raise_if_missing_data(name: str) -> None:
  for prefix, message in _MISSING.items():
    if name.startswith(prefix):
      raise errors.MissingInputError(f"{name!r}: {message}")


def default_vocabulary() -> seqio.Vocabulary:
  return seqio.ByteVocabulary()


def _remove_provider(name: str) -> None:
  seqio.TaskRegistry.remove(name)
  seqio.MixtureRegistry.remove(name)


def _build_task(spec: TaskSpec) -> seqio.Task:
  _remove_provider(spec.name)
  buffer = spec.shuffle_buffer_size
  if buffer is None and not spec.source.performs_internal_shuffling:
    buffer = seqio.SHUFFLE_BUFFER_SIZE
  task = seqio.Task(
      spec.name, source=spec.source,
      preprocessors=preprocessors.task_preprocessors(spec.format_preprocessors, spec.task_id),
      output_features=preprocessors.output_features(spec.vocabulary),
      metric_fns=list(spec.metric_fns), shuffle_buffer_size=buffer)
  seqio.TaskRegistry.add_provider(spec.name, task)
  return task


def _build_mixture(spec: MixtureSpec) -> seqio.Mixture:
  _remove_provider(spec.name)
  mixture = (spec.factory or seqio.Mixture)(spec.name, list(spec.rates))
  seqio.MixtureRegistry.add_provider(spec.name, mixture)
  return mixture


def add_task(spec: TaskSpec, vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
  """Registers (or replaces) a task with seqio and records its declaration."""
  if spec.role not in ROLES:
    raise ValueError(f"unknown task role {spec.role!r}; valid roles: {list(ROLES)}")
  sources.check_kind(spec.kind)
  if vocabulary is not None:
    spec.vocabulary = vocabulary
  elif spec.vocabulary is None:
    spec.vocabulary = default_vocabulary()
  _TASKS[spec.name] = spec
  for key in [k for k in _RECORDS if k[0] == spec.name]:
    del _RECORDS[key]
  return _build_task(spec)


def add_mixture(name: str, family: str, rates: Sequence[tuple[str, Rate]],
                factory: Optional[Callable[..., seqio.Mixture]] = None) -> seqio.Mixture:
  """Registers (or replaces) a mixture of registered tasks with per-task rates."""
  for task, _ in rates:
    check_name(task, kinds=("task",))
  spec = MixtureSpec(name, family, tuple(rates), factory)
  _MIXTURES[name] = spec
  return _build_mixture(spec)


def remove_mixture(name: str) -> None:
  """Unregisters a mixture (its tasks stay); a name that is not registered is ignored."""
  _MIXTURES.pop(name, None)
  _remove_provider(name)


def set_family(family: Family) -> None:
  _FAMILIES[family.name] = family
  for prefix in [p for p in _MISSING if p.startswith(family.name)]:
    del _MISSING[prefix]


def remove_family(name: str) -> None:
  """Unregisters a family with its tasks (few-shot ones included) and mixtures."""
  for task in [t for t, s in _TASKS.items() if s.family == name]:
    del _TASKS[task]
    _remove_provider(task)
  for mix in [m for m, s in _MIXTURES.items() if s.family == name]:
    remove_mixture(mix)
  for key in [k for k in _RECORDS if k[0] not in _TASKS]:
    del _RECORDS[key]
  _FAMILIES.pop(name, None)


def clear() -> None:
  """Unregisters everything this package registered (for tests)."""
  for name in list(_FAMILIES) + sorted({s.family for s in _TASKS.values()}):
    remove_family(name)


def set_vocabulary(vocabulary: seqio.Vocabulary) -> None:
  """Rebuilds every registered task (and so every mixture) with `vocabulary`."""
  for spec in _TASKS.values():
    spec.vocabulary = vocabulary
    _build_task(spec)
  for spec in _MIXTURES.values():
    _build_mixture(spec)
  log.info("re-registered %d tasks and %d mixtures with %s", len(_TASKS), len(_MIXTURES),
           vocabulary)


def reset_vocabulary() -> None:
  """Puts every task back on `default_vocabulary()` (rebuilding them only if one differs)."""
  default = default_vocabulary()
  if any(spec.vocabulary != default for spec in _TASKS.values()):
    set_vocabulary(default)


# ---------------------------------------------------------------------------- look-ups


def check_name(name: str, kinds: Sequence[str] = ("task", "mixture")) -> str:
  """Returns 'task' or 'mixture'; raises UnknownNameError listing close matches."""
  if "task" in kinds and name in _TASKS:
    return "task"
  if "mixture" in kinds and name in _MIXTURES:
    return "mixture"
  _raise_if_missing_data(name)
  valid = ([*_TASKS] if "task" in kinds else []) + ([*_MIXTURES] if "mixture" in kinds else [])
  raise UnknownNameError(" or ".join(kinds), name, valid)


def provider(name: str) -> Union[seqio.Task, seqio.Mixture]:
  """The registered seqio Task or Mixture called `name`."""
  kind = check_name(name)
  registry = seqio.TaskRegistry if kind == "task" else seqio.MixtureRegistry
  if name not in registry.names():  # Someone reset seqio's registries: rebuild.
    return _build_task(_TASKS[name]) if kind == "task" else _build_mixture(_MIXTURES[name])
  return registry.get(name)


def is_task(name: str) -> bool:
  return name in _TASKS


def task_spec(name: str) -> TaskSpec:
  check_name(name, kinds=("task",))
  return _TASKS[name]


def mixture_spec(name: str) -> MixtureSpec:
  check_name(name, kinds=("mixture",))
  return _MIXTURES[name]


def family(name: str) -> Family:
  if name not in _FAMILIES:
    _raise_if_missing_data(name + "_")
    raise UnknownNameError("family", name, list(_FAMILIES))
  return _FAMILIES[name]


def families() -> list[str]:
  return sorted(_FAMILIES)


def task_names(family_name: Optional[str] = None, role: Optional[str] = None) -> list[str]:
  return [n for n, s in _TASKS.items()
          if (family_name is None or s.family == family_name) and (role is None or s.role == role)]


def mixture_names(family_name: Optional[str] = None) -> list[str]:
  return [n for n, s in _MIXTURES.items() if family_name is None or s.family == family_name]


def mixture_tasks(name: str) -> list[str]:
  return [t for t, _ in mixture_spec(name).rates]


def task_id_table(name: str) -> dict[str, int]:
  """Task name -> task id for a family, mixture or task.

  family: its training then held-out tasks (0..n-1); mixture: the task ids
  its examples carry; training/held-out task: its family's table; few-shot
  task: {name: 0} (adaptation uses a fresh one-row routing table).
  """
  if name in _FAMILIES and name not in _TASKS and name not in _MIXTURES:
    return _FAMILIES[name].table
  kind = check_name(name)
  if kind == "mixture":
    return dict(sorted(((t, _TASKS[t].task_id) for t in mixture_tasks(name)),
                       key=lambda kv: kv[1]))
  spec = _TASKS[name]
  if spec.role == "fewshot" or spec.family not in _FAMILIES:
    return {name: spec.task_id}
  return _FAMILIES[spec.family].table


def vocabulary_of(name: str) -> seqio.Vocabulary:
  if check_name(name) == "mixture":
    return _TASKS[mixture_tasks(name)[0]].vocabulary
  return _TASKS[name].vocabulary


def default_sequence_length(name: str) -> dict[str, int]:
  """The sequence lengths of the family `name` (a task or mixture) belongs to."""
  fam = (_TASKS[name].family if check_name(name) == "task" else _MIXTURES[name].family)
  return dict(_FAMILIES[fam].sequence_length) if fam in _FAMILIES else {"inputs": 512,
                                                                      "targets": 128}


def formatted_records(name: str, split: str) -> list[dict]:
  """The task's examples of `split` after formatting, before tokenization (cached).

  Each record follows `tasks.sources` (inputs, targets, answers or choices +
  label) plus the int `task_id`.
  """
  spec = task_spec(name)
  key = (name, split)
  if key not in _RECORDS:
    if split not in spec.source.splits:
      raise ValueError(f"task {name!r} has no split {split!r}; splits: {list(spec.source.splits)}")
    ds = spec.source.get_dataset(split=split, shuffle=False)
    for fn in spec.format_preprocessors:
      ds = fn(ds)
    _RECORDS[key] = [{**sources.numpy_to_record(ex), "task_id": spec.task_id}
                     for ex in ds.as_numpy_iterator()]
  return _RECORDS[key]


def clear_record_cache() -> None:
  """Forgets the cached records of every task (the next read recomputes them)."""
  _RECORDS.clear()


def describe(show_names: bool = True) -> str:
  """A human-readable listing: per family the number of tasks by role, then the names."""
  lines = []
  for fam in sorted({s.family for s in _TASKS.values()} | set(_FAMILIES)):
    counts = {r: len(task_names(fam, r)) for r in ROLES}
    mixes = mixture_names(fam)
    lines.append(f"{fam}: {counts['train']} training tasks, {counts['heldout']} held-out tasks, "
                 f"{counts['fewshot']} few-shot tasks, mixtures: {mixes or 'none'}")
    if show_names:
      for role in ROLES:
        for n in task_names(fam, role):
          lines.append(f"  [{role}] {n}  (task_id {_TASKS[n].task_id}, {_TASKS[n].kind})")
      for m in mixes:
        lines.append(f"  [mixture] {m}  ({len(mixture_tasks(m))} tasks)")
  if not lines:
    return "no tasks registered"
  return "\n".join(lines)
