"""Training invariants: resume == uninterrupted, NaN guard, frozen params unchanged."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from mhr_jax import partitioning
from mhr_jax.adapters import methods
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.checkpoints.orbax import CheckpointStore
from mhr_jax.experiment.model_setup import init_params
from mhr_jax.models import T5, T5Config
from mhr_jax.training.loop import NonFiniteLossError, train_loop
from mhr_jax.training.optimizer import OptimizerConfig
from mhr_jax.param_tree import flatten as flatten_params
from mhr_jax.training.trainer import Trainer

CFG = T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
               num_heads=2, dropout_rate=0.1, feed_forward_proj="gated-gelu",
               tie_word_embeddings=False, scale_decoder_outputs=False)
ADAPTER = AdapterConfig(kind="poly", rank=2, n_tasks=3, n_skills=4, n_heads=2,
                        target_modules="all_linear")


def batch_stream(seed=0):
  """Deterministic endless batches (batch i depends only on i)."""
  for i in itertools.count():
    rng = np.random.RandomState(seed * 100003 + i)
    tgt = rng.randint(2, 40, size=(4, 5)).astype(np.int32)
    tgt[:, -1] = 1
    dec = np.zeros_like(tgt)
    dec[:, 1:] = tgt[:, :-1]
    yield {"encoder_input_tokens": rng.randint(2, 40, size=(4, 6)).astype(np.int32),
           "decoder_input_tokens": dec, "decoder_target_tokens": tgt,
           "decoder_loss_weights": np.ones_like(tgt), "task_ids": rng.randint(0, 3, 4).astype(np.int32)}


def interrupted(batches, n):
  """Yields n batches, then fails like a killed job."""
  for i, b in enumerate(batches):
    if i == n:
      raise KeyboardInterrupt("simulated preemption")
    yield b


# All `heavy` (tests/conftest.py schedules them first, one after another): `setup`'s
# trainers hold the compiled steps the tests share, for as long as this module runs.
pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module", params=[False, True], ids=["dense_routing", "sparse_routing"])
def setup(request):
  model = T5(CFG, adapter=ADAPTER)
  partitioner = partitioning.Partitioner(
      partitioning.make_mesh(data=1, model=1, devices=jax.devices()[:1]))
  params = init_params(model, jax.random.PRNGKey(0), partitioner)
  trainer = Trainer(model, OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.1,
                                           sparse_routing=request.param), 20, partitioner,
                    single_task=False)
  trainable = methods.trainable_predicate("mhr", stage="multitask", train_backbone=False)
  return params, trainer, trainable


def test_resume_equals_uninterrupted(setup, tmp_path):
  params, trainer, trainable = setup
  full, _ = trainer.run(params, trainable, batch_stream(), seed=3, description="full",
                        show_progress=False)
  store = CheckpointStore(str(tmp_path / "ckpt"), save_every_steps=5, keep_last=2)
  with pytest.raises(KeyboardInterrupt):
    trainer.run(params, trainable, interrupted(batch_stream(), 12), seed=3, description="a",
                store=store, show_progress=False)
  assert store.latest_step() == 10
  store2 = CheckpointStore(str(tmp_path / "ckpt"), save_every_steps=5, keep_last=2)
  resumed, _ = trainer.run(params, trainable, batch_stream(), seed=3, description="b",
                           store=store2, show_progress=False)
  assert int(resumed.step) == int(full.step) == 20
  a, b = flatten_params(full.params), flatten_params(resumed.params)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), atol=1e-6, err_msg=k)
  # Training moved the adapters and left the frozen backbone untouched.
  start = flatten_params(params)
  moved = [k for k in a if not np.allclose(np.asarray(a[k]), np.asarray(start[k]))]
  assert moved and all(trainable(k) for k in moved)
  assert any(k.endswith("routing_logits") for k in moved)
  assert any(k.endswith("skill_lora_b") for k in moved)


def test_nonfinite_loss_stops_with_clear_message():
  def step(state, batch):
    return state, {"loss": np.float32(np.nan), "tokens": np.float32(1.0)}

  class S:
    step = 0

  with pytest.raises(NonFiniteLossError,
                     match=r"loss became nan at step 1 \(the first non-finite step\)"):
    train_loop(S(), step, batch_stream(), 5, log_every=2, show_progress=False)


def test_trainer_checks_task_ids_on_the_host(setup):
  """The jitted step has no task-id callback; the Trainer refuses a bad batch before it."""
  params, trainer, trainable = setup

  def bad_third_batch():
    for i, b in enumerate(batch_stream()):
      if i == 2:
        b = {**b, "task_ids": np.array([0, 1, 3, 2], np.int32)}  # n_tasks = 3
      yield b

  with pytest.raises(ValueError, match=r"task ids \[3\] are out of range.*n_tasks=3"):
    trainer.run(params, trainable, bad_third_batch(), seed=0, description="bad",
                show_progress=False)
  # The caller's parameters survived the aborted run (only copies were donated).
  assert all(np.isfinite(np.asarray(v)).all() for v in flatten_params(params).values())
