"""Early checks of a run's configuration: before any model is built or data is read.

`check_run` looks at the effective arguments (signature defaults + gin
bindings) of every stage function the run will call and raises
`errors.ConfigError` with one line naming the binding, the bad value, what is
expected and (for names) the valid choices. It then checks that output_dir is
a writable directory (`errors.OutputDirError`). A typo therefore fails in a
second, not after a model was built and trained.
"""

from __future__ import annotations

import difflib
import inspect
import os
from typing import Any, Callable, Sequence

import gin

import tasks
from mhr_jax import errors
from mhr_jax.adapters import methods
from mhr_jax.experiment import stages
from tasks.registry import UnknownNameError

# (function name, argument) pairs that count things: positive integers.
POSITIVE = {
    "train_multitask": ("steps", "checkpoint_every", "keep_checkpoints", "log_every"),
    "adapt_heldout": ("steps", "k", "log_every"),
    "mu_zero_shot": ("log_every",),
}
NON_NEGATIVE = {"mu_zero_shot": ("steps",)}
DATA_POSITIVE = ("input_length", "target_length", "batch_size", "eval_batch_size")


def _effective(fn: Callable) -> dict[str, Any]:
  """fn's keyword arguments as the call will see them: defaults, then gin bindings."""
  params = inspect.signature(getattr(fn, "__wrapped__", fn)).parameters
  values = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
  try:
    values.update(gin.get_bindings(fn))
  except Exception as e:  # pylint: disable=broad-except  (a binding that fails to evaluate)
    raise errors.ConfigError(f"cannot evaluate the gin bindings of {fn.__name__}: "
                             f"{errors.one_line(e)}") from e
  return values


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_count(name: str, value: Any, minimum: int = 1, what: str = "") -> None:
  """Raises ConfigError unless `value` is an integer >= minimum."""
  expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
  if not _is_int(value) or value < minimum:
    raise errors.ConfigError(f"{name}={value!r} is invalid: expected {expected}"
                             f"{' (' + what + ')' if what else ''}")


def check_choice(name: str, value: Any, valid: Sequence[str]) -> None:
  """One line naming the bad value, the closest valid one and every valid choice.

  The choices are listed in `valid`'s order (a list or tuple: e.g. the stages in
  the order they run), sorted for any other collection (a dict's keys, a set).
  """
  if value not in valid:
    choices = list(valid) if isinstance(valid, (list, tuple)) else sorted(valid)
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise errors.ConfigError(f"unknown {name} {value!r}{hint}; valid choices: {choices}")


def _check_task_name(name: str, value: str, family: bool = False) -> None:
  """A task or mixture name (or, with family=True, a task family) that the registry knows."""
  try:
    tasks.heldout_tasks(value) if family else tasks.task_id_table(value)
  except UnknownNameError as e:
    raise errors.ConfigError(f"{name}: {errors.one_line(e)}") from None


def _check_stage(fn: Callable, stage_methods: Sequence[str] = ()) -> None:
  name = fn.__name__
  args = _effective(fn)
  for key in POSITIVE.get(name, ()):
    check_count(f"{name}.{key}", args.get(key))
  for key in NON_NEGATIVE.get(name, ()):
    check_count(f"{name}.{key}", args.get(key), minimum=0)
  data = args.get("data")
  for key in DATA_POSITIVE:
    if data is not None and hasattr(data, key):
      check_count(f"{name}.data.{key}", getattr(data, key))
  for method in [args.get("method")] + list(stage_methods):
    if method is not None:
      check_choice(f"{name}.method", method, methods.METHODS)
  if name == "train_multitask":
    _check_task_name("train_multitask.mixture", args.get("mixture"))
  if name == "mu_zero_shot" and args.get("mixture"):
    _check_task_name("mu_zero_shot.mixture", args.get("mixture"))
  for task in args.get("tasks") or ():
    _check_task_name(f"{name}.tasks", task)
  if not args.get("tasks") and args.get("family"):
    _check_task_name(f"{name}.family", args["family"], family=True)
  seeds = args.get("seeds")
  if seeds is not None:
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(_is_int(s) for s in seeds):
      raise errors.ConfigError(f"{name}.seeds={seeds!r} is invalid: expected a non-empty list "
                               "of integers")


def check_output_dir(output_dir: Any) -> str:
  """Creates output_dir if needed; raises OutputDirError unless it is a writable directory."""
  if not isinstance(output_dir, str) or not output_dir:
    raise errors.OutputDirError(f"output_dir={output_dir!r} is invalid: expected a directory path")
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise errors.OutputDirError(f"output_dir {output_dir!r} is a file, not a directory; give a "
                                "directory path (it is created if missing)")
  try:
    os.makedirs(output_dir, exist_ok=True)
    probe = os.path.join(output_dir, f".write_test.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise errors.OutputDirError(f"output_dir {output_dir!r} is not a writable directory "
                                f"({e.strerror or errors.one_line(e)})") from None
  return output_dir


def check_run(stage: str, output_dir: Any, adapt_methods: Sequence[str],
              zero_shot_methods: Sequence[str]) -> None:
  """Every check that needs no model: the stages' names and numbers, then output_dir."""
  if stage in ("multitask", "pipeline"):
    _check_stage(stages.train_multitask)
  if stage == "adapt":
    _check_stage(stages.adapt_heldout)
  if stage == "pipeline" and adapt_methods:
    _check_stage(stages.adapt_heldout, adapt_methods)
  if stage == "zero_shot" or (stage == "pipeline" and zero_shot_methods):
    _check_stage(stages.mu_zero_shot)
  if stage == "eval":
    args = _effective(stages.evaluate_checkpoint)
    data = args.get("data")
    for key in DATA_POSITIVE:
      if data is not None and hasattr(data, key):
        check_count(f"evaluate_checkpoint.data.{key}", getattr(data, key))
    for task in args.get("tasks") or ():
      _check_task_name("evaluate_checkpoint.tasks", task)
  check_output_dir(output_dir)
