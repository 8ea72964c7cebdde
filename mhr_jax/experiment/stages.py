"""The stages a user runs: multi-task pre-training, few-shot adaptation, evaluation.

Each stage is a gin-configurable function (t5x style); `run.py` picks one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional, Sequence

import gin
import jax
import numpy as np

from mhr_jax import errors, param_tree, partitioning
from mhr_jax.adapters import methods
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.adapters.routing import routing_table_size, validate_task_ids
from mhr_jax.checkpoints import orbax as orbax_store
from mhr_jax.evaluation.evaluator import Evaluator
from mhr_jax.evaluation.results import save_results, write_atomic
from mhr_jax.evaluation.routing_plot import routing_probabilities, save_routing_heatmap
from mhr_jax.experiment import data as stage_data
from mhr_jax.experiment.model_setup import fill_from, init_params, place_params
from mhr_jax.models import T5, T5Config
from mhr_jax.training.checkpointing import StoreCheckpoint, report_saved_checkpoint
from mhr_jax.training.loop import train_loop
from mhr_jax.training.optimizer import OptimizerConfig, make_optimizer
from mhr_jax.training.state import TrainState
from mhr_jax.training.step import jit_train_step, make_train_step

log = logging.getLogger(__name__)

gin.external_configurable(T5Config, module="mhr_jax")
gin.external_configurable(AdapterConfig, module="mhr_jax")
gin.external_configurable(OptimizerConfig, module="mhr_jax")

STAGES = ("multitask", "adapt", "zero_shot", "eval", "pipeline")


class StageError(errors.ConfigError):
  """An unknown stage or method name; the message lists the valid ones."""
_NUMERICS = ("dtype", "param_dtype", "scan_layers", "remat", "dropout_rate")


@gin.configurable(module="mhr_jax")
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh: `data` x `model` (-1 = all remaining devices)."""
  data: int = -1
  model: int = 1
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None

  def build(self) -> jax.sharding.Mesh:
    partitioning.maybe_initialize_distributed(self.coordinator_address, self.num_processes,
                                              self.process_id)
    return partitioning.make_mesh(data=self.data, model=self.model)


@gin.configurable(module="mhr_jax")
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What the model reads: sequence lengths, batch size, vocabulary."""
  input_length: int = 32
  target_length: int = 32
  batch_size: int = 32
  eval_batch_size: int = 64
  vocabulary: str = "byte"  # 'byte' | 'checkpoint' | 'sentencepiece'


def _writer(directory: str):
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(directory)


class Trainer:
  """One jitted train step for a model + optimizer, reused across tasks and seeds."""

  def __init__(self, model: T5, optimizer_config: OptimizerConfig, steps: int, mesh, *,
               single_task: bool):
    self.steps, self.mesh = steps, mesh
    self.n_tasks = routing_table_size(model.adapter)
    self.optimizer, lr_fn = make_optimizer(optimizer_config, steps)
    self.step_fn = jit_train_step(make_train_step(model, self.optimizer, single_task=single_task,
                                                  learning_rate_fn=lr_fn))

  def _put_batch(self, batch: dict) -> dict:
    # Task ids are checked here, on the host, not inside the jitted step.
    if self.n_tasks is not None:
      validate_task_ids(np.asarray(batch["task_ids"]), self.n_tasks)
    return partitioning.shard_batch(batch, self.mesh)

  def run(self, params: dict, trainable_fn, batches, *, seed: int, description: str,
          writer=None, store=None, extra=None, log_every: int = 10,
          show_progress: bool = True):
    """Builds the state (or resumes it from `store`) and trains; returns (state, history)."""
    state = TrainState.create(params, trainable_fn, self.optimizer, jax.random.PRNGKey(seed))
    ckpt = None
    if store is not None:  # resume: config check, newest usable step, history
      ckpt = StoreCheckpoint(store, extra, self.steps, description)
      state = ckpt.resume(state)
    # The step donates everything but the frozen parameters; copy the trainable
    # ones so the caller's arrays (e.g. the multi-task skills that every task
    # and seed starts from) stay alive.
    state = partitioning.place_on_mesh(state, self.mesh)
    state = state.replace(trainable={k: v.copy() for k, v in state.trainable.items()})
    batches = stage_data.skip(batches, int(state.step))
    state, history = train_loop(
        state, self.step_fn, batches, self.steps,
        put_batch=self._put_batch, writer=writer,
        log_every=log_every, checkpoint_fn=ckpt, description=description,
        show_progress=show_progress, history=ckpt.history if ckpt else None)
    if store is not None:
      store.wait_until_finished()
    return state, history


@gin.configurable(denylist=["output_dir"])
def train_multitask(output_dir: str, *, method: str = "mhr", mixture: str = "synthetic_train",
                    model_config: Optional[T5Config] = None,
                    adapter_config: Optional[AdapterConfig] = None,
                    hf_checkpoint: Optional[str] = None, train_backbone: bool = False,
                    steps: int = 1000, optimizer: OptimizerConfig = OptimizerConfig(),
                    data: DataConfig = DataConfig(), mesh: MeshConfig = MeshConfig(),
                    seed: int = 0, checkpoint_every: int = 500, keep_checkpoints: int = 2,
                    log_every: int = 10, show_progress: bool = True) -> str:
  """Stage 1: pre-trains skills + routing (or a baseline) on a multi-task mixture.

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
    from mhr_jax.checkpoints.hf import load_hf_checkpoint  # pylint: disable=g-import-not-at-top
    # Architecture from the checkpoint; numerics (dtype, scan, remat) from model_config.
    numerics = {f: getattr(model_config, f) for f in _NUMERICS} if model_config else {}
    model_config, pretrained = load_hf_checkpoint(hf_checkpoint, **numerics)
  elif model_config is None:
    raise ValueError("train_multitask needs model_config (e.g. configs/models/tiny.gin) or "
                     "hf_checkpoint (a local Hugging Face T5 directory)")
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
  mesh_ = mesh.build()
  params = init_params(model, jax.random.PRNGKey(seed), mesh_)
  if pretrained is not None:
    params = fill_from(params, pretrained)
  trainable = methods.trainable_predicate(method, stage="multitask",
                                          train_backbone=train_backbone)
  batches = stage_data.train_batches(mixture, data, vocab, seed=seed)
  trainer = Trainer(model, optimizer, steps, mesh_, single_task=False)
  state, history = trainer.run(params, trainable, batches, seed=seed,
                               description=f"multitask/{method}",
                               writer=_writer(os.path.join(stage_dir, "tensorboard")),
                               store=store, extra=extra, log_every=log_every,
                               show_progress=show_progress)
  write_atomic(os.path.join(stage_dir, "train_history.json"), json.dumps(history))
  if adapter is not None and adapter.kind == "poly":
    names = sorted(table, key=table.get)
    save_routing_heatmap(routing_probabilities(state.params), os.path.join(stage_dir,
                         "routing.png"), names, title=f"{method}: learned routing")
  return stage_dir


def load_multitask(stage_dir: str):
  """Restores (model_config, adapter_config, params, extra) from a multi-task stage dir."""
  ckpt_dir = os.path.join(stage_dir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise errors.MissingInputError(f"no multi-task checkpoint under {stage_dir!r} "
                                   f"(expected {ckpt_dir}); run the 'multitask' stage first")
  store = orbax_store.CheckpointStore(ckpt_dir)
  state, extra = store.restore()
  report_saved_checkpoint(stage_dir, int(state["step"]), extra)
  model_config = T5Config(**extra["model_config"])
  adapter = AdapterConfig(**extra["adapter_config"]) if extra.get("adapter_config") else None
  params = {**state["frozen"], **state["trainable"]}
  return model_config, adapter, param_tree.unflatten(params), extra


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
                  log_every: int = 10, show_progress: bool = True) -> dict:
  """Stage 2: few-shot adaptation to each held-out task x seed, then evaluation.

  Starts from the multi-task checkpoint in `multitask_dir` (default
  `output_dir/multitask`). Writes results.json / results.md under
  `output_dir/adapt_<method>` and returns the summary.
  `learning_rate_by_method` ({method: rate}) replaces `optimizer.learning_rate`
  for the methods it names (full fine-tuning wants a smaller rate than an adapter).
  """
  rates = dict(learning_rate_by_method or {})
  unknown = sorted(set(rates) - set(methods.METHODS))
  if unknown:
    raise StageError(f"learning_rate_by_method names unknown method(s) {unknown}; valid "
                     f"choices: {sorted(methods.METHODS)}")
  if method in rates:
    optimizer = dataclasses.replace(optimizer, learning_rate=float(rates[method]))
  multitask_dir = multitask_dir or os.path.join(output_dir, "multitask")
  model_config, mt_adapter, mt_params, extra = load_multitask(multitask_dir)
  stage_dir = os.path.join(output_dir, f"adapt_{method}")
  vocab = stage_data.vocabulary(data, extra.get("hf_checkpoint"))
  heldout = list(tasks) if tasks else stage_data.heldout_tasks(family)
  mesh_ = mesh.build()
  writer = _writer(os.path.join(stage_dir, "tensorboard"))
  trainable = methods.trainable_predicate(method, stage="adapt")
  model = trainer = evaluator = None
  records = []
  for task in heldout:
    examples = stage_data.eval_examples(task, eval_split, max_eval_examples)
    for seed in seeds:
      adapter, params = methods.init_adaptation_params(
          method, mt_params, mt_adapter, rng=jax.random.PRNGKey(seed),
          routing_init=routing_init, mu_average=mu_average, base_config=adapter_config)
      if model is None:  # same shapes for every task and seed: compile once
        model = T5(model_config, adapter=adapter)
        trainer = Trainer(model, optimizer, steps, mesh_, single_task=True)
        evaluator = Evaluator(model, vocab, data.input_length, data.target_length,
                              data.eval_batch_size, single_task=True)
      # init_adaptation_params returns the complete tree of `model`; put it on the mesh.
      params = place_params(model, params, mesh_)
      batches = stage_data.fewshot_batches(task, k, seed, data, vocab)
      state, _ = trainer.run(params, trainable, batches, seed=seed,
                             description=f"adapt/{method}/{task}/s{seed}", writer=writer,
                             log_every=log_every, show_progress=show_progress)
      # Few-shot routing has one row: every example of the new task is task 0.
      metrics_ = evaluator.evaluate(state.params, [{**ex, "task_id": 0} for ex in examples])
      records.append({"task": task, "seed": int(seed), **metrics_})
      log.info("%s %s seed %d: %s", method, task, seed, metrics_)
  return save_results(stage_dir, records, title=f"{method}: {k}-shot on held-out tasks")


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
                 log_every: int = 10, show_progress: bool = True) -> dict:
  """μ zero-shot: average the skills into one LoRA, train it on the training tasks, no few-shot.

  The multi-task skills of `multitask_dir` are averaged (Poly-μ / MHR-μ, see
  `methods.mu_params`), the routing is dropped, and the averaged adapter is
  trained `steps` more steps on the multi-task `mixture` (default: the one the
  checkpoint was trained on); `steps=0` keeps the plain average. Then every
  held-out task is evaluated zero-shot. Writes results under
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
  mesh_ = mesh.build()
  adapter, params = methods.init_adaptation_params(method, mt_params, mt_adapter,
                                                   mu_average=mu_average)
  model = T5(model_config, adapter=adapter)
  params = place_params(model, params, mesh_)
  if steps > 0:
    trainer = Trainer(model, optimizer, steps, mesh_, single_task=False)
    batches = stage_data.train_batches(mixture, data, vocab, seed=seed)
    state, history = trainer.run(params, methods.trainable_predicate(method), batches,
                                 seed=seed, description=f"zero_shot/{method}",
                                 writer=_writer(os.path.join(stage_dir, "tensorboard")),
                                 log_every=log_every, show_progress=show_progress)
    write_atomic(os.path.join(stage_dir, "train_history.json"), json.dumps(history))
    params = state.params
  evaluator = Evaluator(model, vocab, data.input_length, data.target_length,
                        data.eval_batch_size, single_task=True)
  records = []
  for task in (list(tasks) if tasks else stage_data.heldout_tasks(family)):
    examples = stage_data.eval_examples(task, eval_split, max_eval_examples)
    records.append({"task": task, "seed": int(seed),
                    **evaluator.evaluate(params, [{**ex, "task_id": 0} for ex in examples])})
  return save_results(stage_dir, records,
                      title=f"{method} zero-shot ({steps} multi-task steps after averaging)")


@gin.configurable(denylist=["output_dir"])
def evaluate_checkpoint(output_dir: str, *, multitask_dir: Optional[str] = None,
                        tasks: Optional[Sequence[str]] = None, split: str = "validation",
                        data: DataConfig = DataConfig(),
                        max_eval_examples: Optional[int] = None) -> dict:
  """Restores a multi-task checkpoint and evaluates it on its training tasks."""
  multitask_dir = multitask_dir or os.path.join(output_dir, "multitask")
  model_config, adapter, params, extra = load_multitask(multitask_dir)
  table = extra["task_ids"]
  vocab = stage_data.vocabulary(data, extra.get("hf_checkpoint"))
  model = T5(model_config, adapter=adapter)
  evaluator = Evaluator(model, vocab, data.input_length, data.target_length, data.eval_batch_size)
  records = []
  for task in (tasks or sorted(table, key=table.get)):
    examples = stage_data.eval_examples(task, split, max_eval_examples)
    tid = table.get(task, 0)
    records.append({"task": task, "seed": 0,
                    **evaluator.evaluate(params, [{**ex, "task_id": tid} for ex in examples])})
  return save_results(os.path.join(output_dir, "eval"), records,
                      title=f"multi-task checkpoint on {split}")
