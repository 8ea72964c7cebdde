"""The stages a user runs: multi-task pre-training, few-shot adaptation, evaluation.

Each stage is a gin-configurable function (t5x style); `run.py` picks one.
Every stage reads the same way: build the Partitioner from `MeshConfig`,
the model, its parameters placed by the Partitioner, a `Trainer` (training/
trainer.py) for the steps, an `Evaluator` (evaluation/evaluator.py) for the
scores, and `save_results` for the tables.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional, Sequence

import gin
import jax
from tensorboardX import SummaryWriter

from mhr_jax.adapters import methods
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.checkpoints import orbax as orbax_store
from mhr_jax.checkpoints.hf import load_hf_checkpoint
from mhr_jax.evaluation.evaluator import Evaluator
from mhr_jax.evaluation.results import save_results, write_atomic
from mhr_jax.evaluation.routing_plot import routing_probabilities, save_routing_heatmap
from mhr_jax.experiment import data as stage_data
from mhr_jax.experiment.config import DataConfig, MeshConfig
from mhr_jax.experiment.model_setup import fill_from, init_params, param_shardings, place_params
from mhr_jax.models import T5, T5Config
from mhr_jax.partitioning import Partitioner
from mhr_jax.training.optimizer import OptimizerConfig
from mhr_jax.training.state import saved_params
from mhr_jax.training.trainer import Trainer

log = logging.getLogger(__name__)

STAGES = ("multitask", "adapt", "zero_shot", "eval", "pipeline")


class StageError(ValueError):
  """An unknown stage or method name; the message lists the valid ones."""


_NUMERICS = ("dtype", "param_dtype", "scan_layers", "remat", "dropout_rate")


def _evaluator(model: T5, vocab, data: DataConfig, partitioner: Partitioner,
               single_task: bool) -> Evaluator:
  return Evaluator(model, vocab, data.input_length, data.target_length, data.eval_batch_size,
                   partitioner, param_shardings(model, partitioner), single_task=single_task)


def _evaluate_task(evaluator: Evaluator, params, task: str, split: str,
                   max_examples: Optional[int], *, task_id: int = 0, seed: int = 0) -> dict:
  """One results record: `task`'s `split` scored with routing row `task_id`."""
  examples = stage_data.eval_examples(task, split, max_examples)
  metrics_ = evaluator.evaluate(params, [{**ex, "task_id": task_id} for ex in examples])
  return {"task": task, "seed": int(seed), **metrics_}


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
      raise FileNotFoundError(f"hf_checkpoint={hf_checkpoint!r} is not a directory; give a "
                              "local Hugging Face T5 checkpoint (nothing is downloaded)")
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
  partitioner = mesh.build()
  params = init_params(model, jax.random.PRNGKey(seed), partitioner)
  if pretrained is not None:
    params = fill_from(params, pretrained)
  trainable = methods.trainable_predicate(method, stage="multitask",
                                          train_backbone=train_backbone)
  store = orbax_store.CheckpointStore(os.path.join(stage_dir, "checkpoints"),
                                      save_every_steps=checkpoint_every, keep_last=keep_checkpoints)
  extra = {"task_ids": table, "method": method, "model_config": dataclasses.asdict(model_config),
           "adapter_config": dataclasses.asdict(adapter) if adapter else None,
           "hf_checkpoint": hf_checkpoint, "vocabulary": data.vocabulary, "mixture": mixture}
  batches = stage_data.train_batches(mixture, data, vocab, seed=seed)
  trainer = Trainer(model, optimizer, steps, partitioner, single_task=False)
  state, history = trainer.run(params, trainable, batches, seed=seed,
                               description=f"multitask/{method}",
                               writer=SummaryWriter(os.path.join(stage_dir, "tensorboard")),
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
    raise FileNotFoundError(f"no multi-task checkpoint under {stage_dir!r} "
                            f"(expected {ckpt_dir}); run the 'multitask' stage first")
  store = orbax_store.CheckpointStore(ckpt_dir)
  state, extra = store.restore()
  model_config = T5Config(**extra["model_config"])
  adapter = AdapterConfig(**extra["adapter_config"]) if extra.get("adapter_config") else None
  return model_config, adapter, saved_params(state), extra


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
  partitioner = mesh.build()
  writer = SummaryWriter(os.path.join(stage_dir, "tensorboard"))
  trainable = methods.trainable_predicate(method, stage="adapt")
  model = trainer = evaluator = None
  records = []
  for task in heldout:
    for seed in seeds:
      adapter, params = methods.init_adaptation_params(
          method, mt_params, mt_adapter, rng=jax.random.PRNGKey(seed),
          routing_init=routing_init, mu_average=mu_average, base_config=adapter_config)
      if model is None:  # same shapes for every task and seed: compile once
        model = T5(model_config, adapter=adapter)
        trainer = Trainer(model, optimizer, steps, partitioner, single_task=True)
        evaluator = _evaluator(model, vocab, data, partitioner, single_task=True)
      # init_adaptation_params returns the complete tree of `model`; put it on the mesh.
      params = place_params(model, params, partitioner)
      batches = stage_data.fewshot_batches(task, k, seed, data, vocab)
      state, _ = trainer.run(params, trainable, batches, seed=seed,
                             description=f"adapt/{method}/{task}/s{seed}", writer=writer,
                             log_every=log_every, show_progress=show_progress)
      # Few-shot routing has one row: every example of the new task is task 0.
      records.append(_evaluate_task(evaluator, state.params, task, eval_split,
                                    max_eval_examples, seed=seed))
      log.info("%s: %s", method, records[-1])
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
                                 writer=SummaryWriter(os.path.join(stage_dir, "tensorboard")),
                                 log_every=log_every, show_progress=show_progress)
    write_atomic(os.path.join(stage_dir, "train_history.json"), json.dumps(history))
    params = state.params
  evaluator = _evaluator(model, vocab, data, partitioner, single_task=True)
  records = [_evaluate_task(evaluator, params, task, eval_split, max_eval_examples, seed=seed)
             for task in (list(tasks) if tasks else stage_data.heldout_tasks(family))]
  return save_results(stage_dir, records,
                      title=f"{method} zero-shot ({steps} multi-task steps after averaging)")


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
  records = [_evaluate_task(evaluator, params, task, split, max_eval_examples,
                            task_id=table.get(task, 0))
             for task in (tasks or sorted(table, key=table.get))]
  return save_results(os.path.join(output_dir, "eval"), records,
                      title=f"multi-task checkpoint on {split}")
