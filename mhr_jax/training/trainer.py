"""The Trainer: a train state laid out by the Partitioner, one jitted step, the loop.

One Trainer serves every stage (multi-task pre-training, few-shot
adaptation, μ zero-shot) and is reused across the tasks and seeds of a stage:
same shapes, same shardings, one compilation.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mhr_jax.adapters.routing import routing_table_size, validate_task_ids
from mhr_jax.partitioning import Partitioner
from mhr_jax.training.checkpointing import StoreCheckpoint
from mhr_jax.training.loop import train_loop
from mhr_jax.training.optimizer import OptimizerConfig, make_optimizer
from mhr_jax.param_tree import flatten as flatten_params
from mhr_jax.training.state import TrainState, split_params
from mhr_jax.training.step import JittedTrainStep, make_train_step

log = logging.getLogger(__name__)


class Trainer:
  """One model + optimizer + partitioner; builds states and trains them.

  Attributes:
    optimizer: `training.optimizer.Optimizer` of the configuration.
    step_fn: the un-jitted step(state, batch) -> (state, metrics).
  """

  def __init__(self, model, optimizer_config: OptimizerConfig, steps: int,
               partitioner: Partitioner, *, single_task: bool,
               batch_loss: Optional[Callable] = None):
    self.steps, self.partitioner = steps, partitioner
    self.n_tasks = routing_table_size(model.adapter)
    self.optimizer = make_optimizer(optimizer_config, steps)
    self.step_fn = make_train_step(model, self.optimizer, single_task=single_task,
                                   batch_loss=batch_loss)
    self._cache: dict[Any, tuple[Callable, JittedTrainStep]] = {}

  def state_shardings(self, params: Any, is_trainable: Callable[[str], bool]) -> TrainState:
    """The shardings of the train state of `params` (arrays or ShapeDtypeStructs with shardings).

    Each parameter keeps its sharding; its optimizer moments take the same
    one (`Partitioner.state_shardings`); counts and the rng are replicated.
    """
    flat = flatten_params(params)
    mesh = self.partitioner.mesh
    off_mesh = [k for k, v in flat.items()
                if getattr(getattr(v, "sharding", None), "mesh", None) != mesh]
    if off_mesh:
      raise ValueError(f"{len(off_mesh)} parameters (e.g. {off_mesh[0]!r}) are not laid out on "
                       "the trainer's mesh; place them with the Partitioner first "
                       "(experiment.model_setup.place_params)")
    abstract = jax.eval_shape(
        lambda p, rng: TrainState.create(p, is_trainable, self.optimizer.tx, rng),
        params, jax.random.PRNGKey(0))
    return self.partitioner.state_shardings(abstract, flat)

  def init_state(self, params: Any, is_trainable: Callable[[str], bool],
                 seed: int) -> TrainState:
    """A fresh state on the mesh: step 0, the optimizer's init, rng from `seed`.

    The trainable parameters are copied (the step donates them, and the
    caller's arrays, e.g. the multi-task skills every task and seed starts
    from, must stay alive); the frozen ones are shared, never copied.
    """
    shardings = self.state_shardings(params, is_trainable)
    trainable, frozen = split_params(params, is_trainable)
    step, trainable, opt_state, rng = self._compiled(shardings)[0](
        trainable, jax.random.PRNGKey(seed))
    return TrainState(step, trainable, self.partitioner.place(frozen, shardings.frozen),
                      opt_state, rng)

  def jit_step(self, state_shardings: TrainState) -> JittedTrainStep:
    """The jitted step for states laid out as `state_shardings` (built once per layout)."""
    return self._compiled(state_shardings)[1]

  def _compiled(self, shardings: TrainState) -> tuple[Callable, JittedTrainStep]:
    """(jitted state creation, jitted step) for one state layout, built on first use."""
    leaves, treedef = jax.tree_util.tree_flatten(shardings)
    key = (tuple(leaves), treedef)
    if key not in self._cache:
      def create(trainable, rng):
        return (jnp.zeros((), jnp.int32), trainable, self.optimizer.tx.init(trainable), rng)
      create = jax.jit(create, out_shardings=(shardings.step, shardings.trainable,
                                              shardings.opt_state, shardings.rng))
      self._cache[key] = (create, JittedTrainStep(self.step_fn, self.partitioner, shardings))
    return self._cache[key]

  def _put_batch(self, batch: dict) -> dict:
    # Task ids are checked here, on the host, not inside the jitted step.
    if self.n_tasks is not None:
      validate_task_ids(np.asarray(batch["task_ids"]), self.n_tasks)
    return self.partitioner.shard_batch(batch)

  def run(self, params: dict, trainable_fn: Callable[[str], bool], batches, *, seed: int,
          description: str, writer=None, store=None, extra: Optional[dict] = None,
          log_every: int = 10, show_progress: bool = True,
          on_step: Optional[Callable[[TrainState, int], None]] = None
          ) -> tuple[TrainState, list]:
    """Builds the state (or resumes it from `store`) and trains; returns (state, history).

    `params` must already be on the partitioner's mesh (`place_params`).
    on_step(state, step), if given, runs after every step (after checkpointing).
    """
    if store is not None and on_step is not None:
      raise ValueError("Trainer.run takes a checkpoint store or an on_step hook, not both")
    state = self.init_state(params, trainable_fn, seed)
    ckpt = None
    if store is not None:  # resume: config check, newest usable step, history
      ckpt = StoreCheckpoint(store, extra, self.steps, description)
      state = ckpt.resume(state)  # restored onto the state's shardings
    elif on_step is not None:
      ckpt = lambda s, done, force=False: on_step(s, done)
    step = self.jit_step(jax.tree.map(lambda x: x.sharding, state))
    state, history = train_loop(
        state, step, itertools.islice(batches, int(state.step), None), self.steps,
        put_batch=self._put_batch, writer=writer, log_every=log_every, checkpoint_fn=ckpt,
        description=description, show_progress=show_progress,
        history=ckpt.history if store is not None else None)
    if store is not None:
      store.wait_until_finished()
    return state, history
