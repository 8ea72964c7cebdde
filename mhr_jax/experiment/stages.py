"""The stages a user runs: multi-task pre-training, few-shot adaptation, evaluation.

Each stage is a gin-configurable function (t5x style); `run.py` picks one.
Every stage reads the same way: build the Partitioner from `MeshConfig`,
the model, its parameters placed by the Partitioner, a `Trainer` (training/
trainer.py) for the steps, an `Evaluator` (evaluation/evaluator.py) for the
scores, and `save_results` for the tables.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import time
from typing import Optional, Sequence

import gin
import jax

from mhr_jax import errors
from mhr_jax.adapters import methods
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.checkpoints import orbax as orbax_store
from mhr_jax.checkpoints.hf import load_hf_checkpoint
from mhr_jax.evaluation.evaluator import Evaluator
from mhr_jax.evaluation.predictions import predictions_path
from mhr_jax.evaluation.results import save_results, write_atomic
from mhr_jax.evaluation.routing_overview import save_routing_picture
from mhr_jax.evaluation.routing_plot import routing_probabilities
from mhr_jax.experiment import data as stage_data
from mhr_jax.experiment import fewshot_prompts
from mhr_jax.experiment import report
from mhr_jax.experiment.config import DataConfig, MeshConfig
from mhr_jax.experiment.model_setup import fill_from, init_params, param_shardings, place_params
from mhr_jax.experiment.tensorboard import ScalarWriter
from mhr_jax.models import T5, T5Config
from mhr_jax.partitioning import Partitioner
from mhr_jax.training.multiple_choice import MultipleChoiceLoss
from mhr_jax.training.optimizer import OptimizerConfig
from mhr_jax.training.state import saved_params
from mhr_jax.training.trainer import Trainer
from mhr_jax.training.checkpointing import StoreCheckpoint, report_saved_checkpoint

log = logging.getLogger(__name__)

STAGES = ("multitask", "adapt", "zero_shot", "eval", "pipeline", "compile")


class StageError(errors.ConfigError):
  """An unknown stage or method name; the message lists the valid ones."""


_NUMERICS = ("dtype", "param_dtype", "scan_layers", "remat")
SELECTIONS = ("final", "best_of_evaluations")


def _evaluator(model: T5, vocab, data: DataConfig, partitioner: Partitioner,
               single_task: bool, length_normalize: bool = False) -> Evaluator:
  return Evaluator(model, vocab, data.input_length, data.target_length, data.eval_batch_size,
                   partitioner, param_shardings(model, partitioner), single_task=single_task,
                   length_normalize=length_normalize)


def _evaluate(evaluator: Evaluator, params, task: str, examples, stage_dir: str,
              seed: int = 0) -> dict:
  """One results record: `task` scored on `examples`; predictions saved under `stage_dir`."""
  metrics_ = evaluator.evaluate(params, examples, predictions_path(stage_dir, task, seed))
  return {"task": task, "seed": int(seed), **metrics_}


@gin.configurable(denylist=["output_dir"])
def train_multitask(output_dir: str, *, method: str = "mhr", mixture: str = "synthetic_train",
                    model_config: Optional[T5Config] = None,
                    adapter_config: Optional[AdapterConfig] = None,
                    hf_checkpoint: Optional[str] = None, train_backbone: bool = False,
                    steps: int = 1000, optimizer: OptimizerConfig = OptimizerConfig(),
                    data: DataConfig = DataConfig(), mesh: MeshConfig = MeshConfig(),
                    seed: int = 0, checkpoint_every: int = 500, keep_checkpoints: int = 2,
                    log_every: int = 10, show_progress: bool = True,
                    dropout_rate: Optional[float] = None) -> str:
  """Stage 1: pre-trains skills + routing (or a baseline) on a multi-task mixture.

  With `hf_checkpoint` the architecture and the dropout rate come from the
  checkpoint (mttl trains with the checkpoint's dropout, 0.1 for T5 v1.1 / T0),
  the numerics (dtype, scan, remat) from `model_config`; `dropout_rate`
  overrides the dropout (of the checkpoint or of `model_config`). The
  adaptation stages keep the multi-task stage's dropout.

  Writes an Orbax checkpoint under `output_dir/multitask/checkpoints` with the
  task-id table and configs, plus TensorBoard scalars and a routing heatmap.
  Returns the stage directory.
  """
  stage_dir = os.path.join(output_dir, "multitask")
  pretrained = None
  if hf_checkpoint:
    if not os.path.isdir(hf_checkpoint):
      raise errors.MissingInputError(
          f"hf_checkpoint={hf_checkpoint!r} is not a directory; give a local Hugging Face T5 "
          "checkpoint (nothing is downloaded)")
    # Architecture from the checkpoint; numerics (dtype, scan, remat) from model_config.
    numerics = {f: getattr(model_config, f) for f in _NUMERICS} if model_config else {}
    model_config, pretrained = load_hf_checkpoint(hf_checkpoint, **numerics)
  elif model_config is None:
    raise ValueError("train_multitask needs model_config (e.g. configs/models/tiny.gin) or "
                     "hf_checkpoint (a local Hugging Face T5 directory)")
  if dropout_rate is not None:
    model_config = model_config.replace(dropout_rate=float(dropout_rate))
  table = stage_data.task_id_table(mixture)
  vocab = stage_data.vocabulary(data, hf_checkpoint)
  model_config = stage_data.with_vocab_size(model_config, vocab, hf_checkpoint)
  adapter = methods.multitask_adapter_config(method, adapter_config or AdapterConfig(),
                                             n_tasks=len(table))
  model = T5(model_config, adapter=adapter)
  store = orbax_store.CheckpointStore(os.path.join(stage_dir, "checkpoints"),
                                      save_every_steps=checkpoint_every, keep_last=keep_checkpoints)
  extra = {"task_ids": table, "method": method, "model_config": dataclasses.asdict(model_config),
           "adapter_config": dataclasses.asdict(adapter) if adapter else None,
           "hf_checkpoint": hf_checkpoint, "vocabulary": data.vocabulary, "mixture": mixture}
  StoreCheckpoint(store, extra, steps).check_config()  # before building anything
  partitioner = mesh.build()
  params = init_params(model, jax.random.PRNGKey(seed), partitioner)
  if pretrained is not None:
    params = fill_from(params, pretrained)
  trainable = methods.trainable_predicate(method, stage="multitask",
                                          train_backbone=train_backbone)
  batches = stage_data.train_batches(mixture, data, vocab, seed=seed)
  truncation = stage_data.truncation_report(mixture)
  if truncation is not None:
    write_atomic(os.path.join(stage_dir, "truncation.json"), json.dumps(truncation, indent=1))
  trainer = Trainer(model, optimizer, steps, partitioner, single_task=False)
  t_start = time.time()
  state, history = trainer.run(params, trainable, batches, seed=seed,
                               description=f"multitask/{method}",
                               writer=ScalarWriter(os.path.join(stage_dir, "tensorboard")),
                               store=store, extra=extra, log_every=log_every,
                               show_progress=show_progress)
  write_atomic(os.path.join(stage_dir, "train_history.json"), json.dumps(history))
  seconds = time.time() - t_start
  outputs = {"checkpoints": os.path.join(stage_dir, "checkpoints"),
             "tensorboard": os.path.join(stage_dir, "tensorboard"),
             "train history": os.path.join(stage_dir, "train_history.json"),
             "truncation per task": os.path.join(stage_dir, "truncation.json")}
  if adapter is not None and adapter.kind == "poly":
    names = sorted(table, key=table.get)
    paths = save_routing_picture(routing_probabilities(state.params), stage_dir, names,
                                 title=f"{method}: learned routing")
    outputs.update({"routing picture": paths["png"], "routing matrix": paths["csv"]})
  report.stage_summary(f"multitask/{method} on {mixture} ({len(table)} tasks)",
                       report.train_facts(steps, seconds, history), outputs)
  return stage_dir


# {checkpoint directory: (step, params, extra)} while `restoring_once()` is active.
_RESTORED: Optional[dict] = None


@contextlib.contextmanager
def restoring_once():
  """Within it, `load_multitask` reads each multi-task checkpoint once.

  `pipeline.run` holds it for one run, whose checkpoint is written before it is
  first read and never changes after: the routing report, each adaptation
  method, each μ zero-shot run and the eval stage then share one restore (an
  Orbax restore of even the tiny model costs ~1.5 s). The arrays are shared,
  as the adapt stage already shares them across its tasks and seeds; the
  containers and `extra` are fresh copies on every call.
  """
  global _RESTORED
  outer, _RESTORED = _RESTORED, ({} if _RESTORED is None else _RESTORED)
  try:
    yield
  finally:
    _RESTORED = outer


def load_multitask(stage_dir: str):
  """Restores (model_config, adapter_config, params, extra) from a multi-task stage dir."""
  ckpt_dir = os.path.join(stage_dir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise errors.MissingInputError(f"no multi-task checkpoint under {stage_dir!r} "
                                   f"(expected {ckpt_dir}); run the 'multitask' stage first")
  key = os.path.realpath(ckpt_dir)
  if _RESTORED is not None and key in _RESTORED:
    step, params, extra = _RESTORED[key]
  else:
    state, extra = orbax_store.CheckpointStore(ckpt_dir).restore()
    step, params = int(state["step"]), saved_params(state)
    if _RESTORED is not None:
      _RESTORED[key] = (step, params, extra)
  report_saved_checkpoint(stage_dir, step, extra)
  model_config = T5Config(**extra["model_config"])
  adapter = AdapterConfig(**extra["adapter_config"]) if extra.get("adapter_config") else None
  return model_config, adapter, jax.tree.map(lambda x: x, params), copy.deepcopy(extra)


@gin.configurable(denylist=["output_dir"])
def adapt_heldout(output_dir: str, *, method: str = "mhr", multitask_dir: Optional[str] = None,
                  family: str = "synthetic", tasks: Optional[Sequence[str]] = None,
                  k: int = 16, seeds: Sequence[int] = (0, 1, 2), steps: int = 100,
                  optimizer: OptimizerConfig = OptimizerConfig(),
                  data: DataConfig = DataConfig(), mesh: MeshConfig = MeshConfig(),
                  routing_init: str = "uniform", mu_average: str = "uniform",
                  adapter_config: Optional[AdapterConfig] = None,
                  eval_split: str = "test", max_eval_examples: Optional[int] = None,
                  learning_rate_by_method: Optional[dict] = None,
                  log_every: int = 10, show_progress: bool = True,
                  k_by_task: Optional[dict] = None, fewshot_sampling: Optional[str] = None,
                  prompts: str = "handwritten", loss: MultipleChoiceLoss = MultipleChoiceLoss(),
                  length_normalize: bool = False, selection: str = "final",
                  eval_every: Optional[int] = None) -> dict:
  """Stage 2: few-shot adaptation to each held-out task x seed, then evaluation.

  Starts from the multi-task checkpoint in `multitask_dir` (default
  `output_dir/multitask`). Writes results.json / results.md under
  `output_dir/adapt_<method>` and returns the summary.
  `learning_rate_by_method` ({method: rate}) replaces `optimizer.learning_rate`
  for the methods it names (full fine-tuning wants a smaller rate than an adapter).

  The paper's T0 protocol (configs/experiments/t0_3b.gin, docs/PROTOCOL.md):
  k_by_task: shots per task where it differs from `k`.
  fewshot_sampling: 'balanced' | 'uniform' | 'shuffle' (mttl's seeded
    shuffle); None: balanced for multiple choice (tasks.fewshot).
  prompts: 'handwritten' or 'promptsource' (a template drawn per example).
  loss: the few-shot objective (`multiple_choice.MultipleChoiceLoss`; its
    MC / unlikelihood terms train on every answer choice).
  length_normalize: rank classification by mean, not summed, token
    log-likelihood of each choice.
  selection: 'final' (the last step's scores) or 'best_of_evaluations'
    (mttl's: evaluate every `eval_every` steps on the evaluation split and
    keep the best; OPTIMISTIC, it selects on the split it reports; the
    records then carry the final scores and `<metric>_best_of_evals_optimistic`).
  """
  rates = dict(learning_rate_by_method or {})
  unknown = sorted(set(rates) - set(methods.METHODS))
  if unknown:
    raise StageError(f"learning_rate_by_method names unknown method(s) {unknown}; valid "
                     f"choices: {sorted(methods.METHODS)}")
  if method in rates:
    optimizer = dataclasses.replace(optimizer, learning_rate=float(rates[method]))
  fewshot_prompts.check_prompts(prompts)
  if selection not in SELECTIONS:
    raise StageError(f"selection={selection!r} is not supported; valid choices: "
                     f"{list(SELECTIONS)}")
  if selection == "best_of_evaluations" and not (eval_every and eval_every > 0):
    raise StageError("selection='best_of_evaluations' needs eval_every > 0 (mttl: every 50 "
                     "epochs, i.e. 200 steps at 32 shots and batch 8)")
  multitask_dir = multitask_dir or os.path.join(output_dir, "multitask")
  model_config, mt_adapter, mt_params, extra = load_multitask(multitask_dir)
  stage_dir = os.path.join(output_dir, f"adapt_{method}")
  vocab = stage_data.vocabulary(data, extra.get("hf_checkpoint"))
  heldout = list(tasks) if tasks else stage_data.heldout_tasks(family)
  partitioner = mesh.build()
  writer = ScalarWriter(os.path.join(stage_dir, "tensorboard"))
  trainable = methods.trainable_predicate(method, stage="adapt")
  model = trainer = evaluator = None
  records = []
  python_batches = prompts != "handwritten" or loss.active
  for task in heldout:
    k_task = fewshot_prompts.shots(task, k, k_by_task)
    for seed in seeds:
      examples = fewshot_prompts.eval_examples(task, eval_split, max_eval_examples,
                                               prompts=prompts, seed=seed)
      adapter, params = methods.init_adaptation_params(
          method, mt_params, mt_adapter, rng=jax.random.PRNGKey(seed),
          routing_init=routing_init, mu_average=mu_average, base_config=adapter_config)
      if model is None:  # same shapes for every task and seed: compile once
        model = T5(model_config, adapter=adapter)
        trainer = Trainer(model, optimizer, steps, partitioner, single_task=True,
                          batch_loss=loss if loss.active else None)
        evaluator = _evaluator(model, vocab, data, partitioner, single_task=True,
                               length_normalize=length_normalize)
      # init_adaptation_params returns the complete tree of `model`; put it on the mesh.
      params = place_params(model, params, partitioner)
      if python_batches:
        batches = fewshot_prompts.fewshot_batches(
            task, k_task, seed, data.batch_size, vocab, data.input_length, data.target_length,
            prompts=prompts, sampling=fewshot_sampling, choices=loss.active)
      else:
        batches = stage_data.fewshot_batches(task, k_task, seed, data, vocab,
                                             sampling=fewshot_sampling)
      # Few-shot routing has one row: every example of the new task is task 0.
      evals = []  # best_of_evaluations: the scores every eval_every steps before the last
      on_step = None
      if selection == "best_of_evaluations":
        def on_step(s, step, _ev=evaluator, _ex=examples):
          if step % eval_every == 0 and step < steps:
            evals.append(_ev.evaluate(s.params, _ex))
      state, _ = trainer.run(params, trainable, batches, seed=seed,
                             description=f"adapt/{method}/{task}/s{seed}", writer=writer,
                             log_every=log_every, show_progress=show_progress, on_step=on_step)
      # The final step's scores, with its predictions saved, as in every stage.
      record = _evaluate(evaluator, state.params, task, examples, stage_dir, seed)
      if selection == "best_of_evaluations":
        for name in [k for k in record if k not in ("task", "seed")]:
          record[f"{name}_best_of_evals_optimistic"] = max([e[name] for e in evals] +
                                                           [record[name]])
      records.append(record)
      log.info("%s: %s", method, record)
  title = f"{method}: {k}-shot on held-out tasks" + (
      f" ({', '.join(f'{t}: {n}' for t, n in sorted(k_by_task.items()))})" if k_by_task else "")
  if selection == "best_of_evaluations":
    title += (f"; *_best_of_evals_optimistic: best of the evaluations every {eval_every} steps "
              f"on '{eval_split}' (selected on the reported split: optimistic)")
  summary = save_results(stage_dir, records, title=title)
  _results_summary(f"adapt/{method}", stage_dir,
                   [f"{len(heldout)} held-out tasks x {len(seeds)} seeds, {k}-shot, "
                    f"{steps} steps each", report.average_line(summary)])
  return summary


def _results_summary(title: str, stage_dir: str, facts) -> None:
  report.stage_summary(title, facts, {
      "results": os.path.join(stage_dir, "results.md"),
      "results (JSON)": os.path.join(stage_dir, "results.json"),
      "predictions": os.path.join(stage_dir, "predictions"),
      "tensorboard": os.path.join(stage_dir, "tensorboard")})


def mu_methods() -> list[str]:
  """The methods whose adapter is the average of the skills (Poly-μ, MHR-μ)."""
  return [name for name, m in methods.METHODS.items() if m.adaptation == "mu"]


@gin.configurable(denylist=["output_dir"])
def mu_zero_shot(output_dir: str, *, method: str = "mhr_mu", multitask_dir: Optional[str] = None,
                 mixture: Optional[str] = None, steps: int = 100,
                 optimizer: OptimizerConfig = OptimizerConfig(),
                 data: DataConfig = DataConfig(), mesh: MeshConfig = MeshConfig(),
                 mu_average: str = "uniform", family: str = "synthetic",
                 tasks: Optional[Sequence[str]] = None, eval_split: str = "test",
                 max_eval_examples: Optional[int] = None, seed: int = 0,
                 log_every: int = 10, show_progress: bool = True,
                 prompts: str = "handwritten", length_normalize: bool = False) -> dict:
  """μ zero-shot: average the skills into one LoRA, train it on the training tasks, no few-shot.

  The multi-task skills of `multitask_dir` are averaged (Poly-μ / MHR-μ, see
  `methods.mu_params`), the routing is dropped, and the averaged adapter is
  trained `steps` more steps on the multi-task `mixture` (default: the one the
  checkpoint was trained on); `steps=0` keeps the plain average. Then every
  held-out task is evaluated zero-shot (`prompts` and `length_normalize` as
  in `adapt_heldout`). Writes results under
  `output_dir/zero_shot_<method>` and returns the summary.
  """
  if method not in mu_methods():
    raise StageError(f"mu_zero_shot method {method!r} is not a skill-averaging method; "
                     f"valid choices: {mu_methods()}")
  multitask_dir = multitask_dir or os.path.join(output_dir, "multitask")
  model_config, mt_adapter, mt_params, extra = load_multitask(multitask_dir)
  mixture = mixture or extra.get("mixture")
  if steps > 0 and not mixture:
    raise StageError(f"the checkpoint in {multitask_dir!r} does not record its mixture; set "
                     "mu_zero_shot.mixture")
  stage_dir = os.path.join(output_dir, f"zero_shot_{method}")
  vocab = stage_data.vocabulary(data, extra.get("hf_checkpoint"))
  partitioner = mesh.build()
  adapter, params = methods.init_adaptation_params(method, mt_params, mt_adapter,
                                                   mu_average=mu_average)
  model = T5(model_config, adapter=adapter)
  params = place_params(model, params, partitioner)
  if steps > 0:
    trainer = Trainer(model, optimizer, steps, partitioner, single_task=False)
    batches = stage_data.train_batches(mixture, data, vocab, seed=seed)
    state, history = trainer.run(params, methods.trainable_predicate(method), batches,
                                 seed=seed, description=f"zero_shot/{method}",
                                 writer=ScalarWriter(os.path.join(stage_dir, "tensorboard")),
                                 log_every=log_every, show_progress=show_progress)
    write_atomic(os.path.join(stage_dir, "train_history.json"), json.dumps(history))
    params = state.params
  evaluator = _evaluator(model, vocab, data, partitioner, single_task=True,
                         length_normalize=length_normalize)
  records = []
  for task in (list(tasks) if tasks else stage_data.heldout_tasks(family)):
    examples = fewshot_prompts.eval_examples(task, eval_split, max_eval_examples,
                                             prompts=prompts, seed=seed)
    records.append(_evaluate(evaluator, params, task, examples, stage_dir, seed))
  summary = save_results(stage_dir, records,
                         title=f"{method} zero-shot ({steps} multi-task steps after averaging)")
  _results_summary(f"zero_shot/{method}", stage_dir,
                   [f"{len(records)} held-out tasks", report.average_line(summary)])
  return summary


@gin.configurable(denylist=["output_dir"])
def evaluate_checkpoint(output_dir: str, *, multitask_dir: Optional[str] = None,
                        tasks: Optional[Sequence[str]] = None, split: str = "validation",
                        data: DataConfig = DataConfig(), mesh: MeshConfig = MeshConfig(),
                        max_eval_examples: Optional[int] = None) -> dict:
  """Restores a multi-task checkpoint and evaluates it on its training tasks."""
  multitask_dir = multitask_dir or os.path.join(output_dir, "multitask")
  model_config, adapter, params, extra = load_multitask(multitask_dir)
  table = extra["task_ids"]
  vocab = stage_data.vocabulary(data, extra.get("hf_checkpoint"))
  model = T5(model_config, adapter=adapter)
  partitioner = mesh.build()
  params = place_params(model, params, partitioner)
  evaluator = _evaluator(model, vocab, data, partitioner, single_task=False)
  eval_dir = os.path.join(output_dir, "eval")
  records = []
  for task in (tasks or sorted(table, key=table.get)):
    tid = table.get(task, 0)
    examples = [{**ex, "task_id": tid} for ex in stage_data.eval_examples(task, split,
                                                                          max_eval_examples)]
    records.append(_evaluate(evaluator, params, task, examples, eval_dir))
  summary = save_results(eval_dir, records, title=f"multi-task checkpoint on {split}")
  _results_summary("eval", eval_dir,
                   [f"{len(records)} tasks on {split}", report.average_line(summary)])
  return summary
