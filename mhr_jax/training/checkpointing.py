"""How a training run uses its `CheckpointStore`: resume checks, and the save callback.

`StoreCheckpoint` is what `Trainer.run` hands to `train_loop` as its
`checkpoint_fn`. Resuming (`resume`):

1. compares the configuration saved in the newest readable checkpoint with
   the current one (`config_check.compare`) and stops with one line naming
   the differing fields when they differ (restoring would fail deep inside
   Orbax with a tree dump, or silently train another model);
2. restores newest-first, skipping unreadable and non-finite steps with one
   warning each (`CheckpointStore.restore`), deletes those newer unusable
   steps so the run can write them again, and logs "resumed from step N" once;
3. brings back the metric history saved with the checkpoint, so
   train_history.json covers the whole run across restarts.

Every save records `planned_steps` (the run's total) next to the step, so a
reader can tell a finished run from a preempted one.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Optional

import gin

from mhr_jax import errors

log = logging.getLogger(__name__)

# The extra keys that define what a checkpoint is (restoring with others is an error).
IDENTITY_KEYS = ("method", "mixture", "model_config", "adapter_config", "hf_checkpoint",
                 "vocabulary", "task_ids")


def _jsonable(value: Any) -> Any:
  return json.loads(json.dumps(value, default=str))


def differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                keys=IDENTITY_KEYS) -> list[str]:
  """Dotted names of the fields that differ: ['adapter_config.n_skills', 'method']."""
  out = []
  for key in keys:
    if key not in saved or key not in current:
      continue
    a, b = _jsonable(saved[key]), _jsonable(current[key])
    if isinstance(a, dict) and isinstance(b, dict) and key != "task_ids":
      out += [f"{key}.{f}" for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
    elif a != b:
      out.append(key)
  return out


def describe(saved: Mapping[str, Any], current: Mapping[str, Any], names: list[str],
             limit: int = 6) -> str:
  """'adapter_config.n_skills: saved 8, now 4; method: saved 'mhr', now 'poly''."""
  def get(d, name):
    for part in name.split("."):
      d = d.get(part) if isinstance(d, dict) else None
    return d
  parts = []
  for name in names[:limit]:
    a, b = get(_jsonable(saved), name), get(_jsonable(current), name)
    if name == "task_ids":
      parts.append(f"task_ids: saved {len(a or {})} tasks, now {len(b or {})}")
    else:
      parts.append(f"{name}: saved {a!r}, now {b!r}")
  if len(names) > limit:
    parts.append(f"and {len(names) - limit} more")
  return "; ".join(parts)


class StoreCheckpoint:
  """The save callback of one training run over a `CheckpointStore`.

  Attributes:
    store: the CheckpointStore.
    extra: JSON metadata saved with every step (configs, task-id table).
    total_steps: the run's planned number of steps (saved as `planned_steps`).
    history: the logged metrics so far (restored on resume, appended by the loop).
  """

  def __init__(self, store, extra: Optional[Mapping[str, Any]], total_steps: int,
               description: str = "train"):
    self.store, self.total_steps, self.description = store, int(total_steps), description
    self.extra = dict(extra or {})
    self.history: list = []

  def due(self, step: int) -> bool:
    return step == self.total_steps or self.store.is_due(step)

  def __call__(self, state, step: int, force: bool = False) -> bool:
    extra = {**self.extra, "planned_steps": self.total_steps, "history": self.history}
    return self.store.save(step, state, extra, force=force or step == self.total_steps)

  def check_config(self) -> None:
    """Raises CheckpointError when the newest readable checkpoint has another identity."""
    for step in reversed(self.store.all_steps()):
      saved = self.store.read_extra(step)
      if saved is None:
        continue
      names = differences(saved, self.extra)
      if names:
        directory, diff = self.store.directory, describe(saved, self.extra, names)
        raise errors.CheckpointError(
            f"{directory} holds checkpoints of another configuration ({diff}); use another "
            f"output_dir, or delete {directory} to start over")
      return

  def resume(self, state):
    """The newest usable checkpoint restored onto `state`'s structure, or `state` if none."""
    steps = self.store.all_steps()
    if not steps:
      return state
    self.check_config()
    restored, saved = self.store.restore(target=state)
    step = int(restored.step)
    newer = [s for s in steps if s > step]
    for s in newer:  # unreadable or non-finite (warned about): the run writes them again
      self.store.delete(s)
    if newer:
      log.warning("%s: deleted unusable newer checkpoint step(s) %s; training continues from "
                  "step %d", self.description, newer, step)
    self.history[:] = [h for h in saved.get("history", []) if h.get("step", 0) <= step]
    log.info("%s: resumed from step %d", self.description, step)
    return restored


def configured_overrides(extra: Mapping[str, Any]) -> list[str]:
  """Gin-bound settings that a restored checkpoint's saved configuration overrides.

  A stage that restores a multi-task checkpoint (eval, adapt, zero_shot)
  builds the model from the saved configs, so a binding such as
  `mhr_jax.AdapterConfig.n_skills = 4` has no effect there; this lists each
  such binding as 'adapter_config.n_skills: checkpoint 8, configured 4'.
  Derived fields (n_tasks, vocab_size, Poly's single head) are not compared.
  """
  def bound(name):
    try:
      return True, gin.query_parameter(name)
    except (ValueError, KeyError):
      return False, None
  out = []
  adapter = extra.get("adapter_config") or {}
  skip = {"adapter_config": {"n_tasks", "kind"} | ({"n_heads"} if adapter.get("n_heads") == 1
                                                    else set()),
          "model_config": {"vocab_size"}}
  sections = [("adapter_config", "mhr_jax.AdapterConfig")]
  if not extra.get("hf_checkpoint"):  # a HF checkpoint's architecture is its own
    sections.append(("model_config", "mhr_jax.T5Config"))
  for key, configurable in sections:
    for field, saved in sorted((extra.get(key) or {}).items()):
      if field in skip[key]:
        continue
      found, value = bound(f"{configurable}.{field}")
      if found and _jsonable(value) != _jsonable(saved):
        out.append(f"{key}.{field}: checkpoint {saved!r}, configured {value!r}")
  for key in ("method", "mixture"):
    found, value = bound(f"train_multitask.{key}")
    if found and key in extra and value != extra[key]:
      out.append(f"{key}: checkpoint {extra[key]!r}, configured {value!r}")
  return out


def report_saved_checkpoint(where: str, step: int, extra: Mapping[str, Any]) -> None:
  """Warns (one line each) about an unfinished run and about overridden settings."""
  planned = extra.get("planned_steps")
  if planned is not None and step < int(planned):
    log.warning("%s: the checkpoint is from an unfinished run (step %d of %d planned); using it "
                "as is (rerun the multitask stage with the same command to finish training)",
                where, step, int(planned))
  overrides = configured_overrides(extra)
  if overrides:
    log.warning("%s: the checkpoint's saved configuration is used; these configured values are "
                "ignored: %s", where, "; ".join(overrides))
