"""Orbax training checkpoints: round trips, step policy, atomicity, sharded restore.

The sharded round trip needs 8 devices, fixed when jax starts, so it runs
this file as a script in a subprocess (as tests/test_partitioning.py does);
`python tests/test_orbax_checkpoints.py check_sharded_round_trip DIR` runs
it by hand.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mhr_jax import partitioning
from mhr_jax.checkpoints.orbax import CheckpointStore, restore_params, save_params

_REPO = pathlib.Path(__file__).resolve().parents[1]
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # what Orbax appends while a step is being written


def _state(seed: int = 0, step: int = 0) -> dict:
  """A train-state-like pytree: flat '/'-keyed params, adam state, step, rng key."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {"encoder/layers_0/attention/query/kernel": jax.random.normal(k1, (4, 8)),
            "encoder/layers_0/attention/query/adapter/routing_logits":
                jax.random.uniform(k2, (3, 2, 4)),
            "token_embedder/embedding": jnp.arange(12, dtype=jnp.bfloat16).reshape(6, 2)}
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  _, opt_state = tx.update(params, opt_state, params)  # non-zero moments
  return {"params": params, "opt_state": opt_state, "step": jnp.asarray(step, jnp.int32),
          "rng": jax.random.key(seed + 100)}


def _extra(step: int) -> dict:
  return {"data_position": {"epoch": 1, "examples_seen": 32 * step},
          "task_ids": {"super_glue_rte": 0, "copa": 1, "anli_r1": 2},
          "configs": {"model": {"d_model": 8, "dtype": "float32"}, "lr": 1e-3}}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


def _assert_same(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for r, e in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert r.dtype == e.dtype and r.shape == e.shape
    if jax.dtypes.issubdtype(e.dtype, jax.dtypes.prng_key):
      r, e = jax.random.key_data(r), jax.random.key_data(e)
    np.testing.assert_array_equal(np.asarray(r), np.asarray(e))
    assert r.sharding.is_equivalent_to(e.sharding, e.ndim), (r.sharding, e.sharding)


def _step_dirs(directory) -> list[str]:
  return sorted(p.name for p in pathlib.Path(directory).iterdir() if p.is_dir())


def test_round_trip_of_state_and_extra(tmp_path):
  state = _state(step=7)
  with CheckpointStore(tmp_path / "ckpt") as store:
    assert store.latest_step() is None
    assert store.save(7, state, _extra(7))
    restored, extra = store.restore(target=_abstract(state))
    _assert_same(restored, state)
    assert extra == _extra(7)
  # A new process (a resumed job) finds and reads the same step; a concrete
  # target (a fresh init) works as well as an abstract one.
  with CheckpointStore(tmp_path / "ckpt") as store:
    assert store.latest_step() == 7 and store.all_steps() == [7]
    restored, extra = store.restore(target=_state(seed=5))
    _assert_same(restored, state)
    assert extra["task_ids"] == {"super_glue_rte": 0, "copa": 1, "anli_r1": 2}


def test_save_every_n_steps_and_keep_last_k(tmp_path):
  with CheckpointStore(tmp_path, save_every_steps=3, keep_last=2) as store:
    saved = [step for step in range(11) if store.save(step, _state(step=step), _extra(step))]
    assert saved == [0, 3, 6, 9]
    assert store.all_steps() == [6, 9] and store.latest_step() == 9
    assert _step_dirs(tmp_path) == ["6", "9"]  # old steps are deleted from disk
    # The final step is saved off-schedule; a second save of a step is refused.
    assert store.save(10, _state(step=10), _extra(10), force=True)
    assert not store.save(10, _state(step=10), _extra(10), force=True)
    assert store.all_steps() == [9, 10] and _step_dirs(tmp_path) == ["10", "9"]

    state_9 = _state(step=9)
    restored, extra = store.restore(9, target=_abstract(state_9))
    _assert_same(restored, state_9)
    assert extra["data_position"]["examples_seen"] == 32 * 9
    with pytest.raises(FileNotFoundError, match=r"step 6 .*available steps: \[9, 10\]"):
      store.restore(6, target=_abstract(state_9))


def test_restore_from_an_empty_directory_fails_clearly(tmp_path):
  with CheckpointStore(tmp_path) as store:
    with pytest.raises(FileNotFoundError, match="no checkpoints in"):
      store.restore()


def test_a_save_that_dies_before_its_commit_leaves_no_step(tmp_path, monkeypatch):
  state_1, state_2 = _state(seed=1, step=1), _state(seed=2, step=2)
  with CheckpointStore(tmp_path) as store:
    assert store.save(1, state_1, _extra(1))

    # Everything of step 2 gets written, then the job "dies" at the atomic
    # rename that commits it.
    def crash(self, target):
      raise RuntimeError(f"simulated crash renaming {self} -> {target}")
    monkeypatch.setattr(type(store.directory), "rename", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
      store.save(2, state_2, _extra(2))
    monkeypatch.undo()

    leftovers = [d for d in _step_dirs(tmp_path) if d != "1"]
    assert leftovers and all(d.startswith("2" + _TMP_SUFFIX) for d in leftovers), leftovers
    assert store.latest_step() == 1 and store.all_steps() == [1]

  # The restarted job resumes from step 1, and clears the half-written step.
  with CheckpointStore(tmp_path) as store:
    assert store.latest_step() == 1 and store.all_steps() == [1]
    assert _step_dirs(tmp_path) == ["1"]
    restored, extra = store.restore(target=_abstract(state_1))
    _assert_same(restored, state_1)
    assert extra == _extra(1)
    assert store.save(2, state_2, _extra(2))
    assert store.latest_step() == 2


def test_a_stray_temporary_directory_is_never_a_step(tmp_path):
  with CheckpointStore(tmp_path) as store:
    store.save(1, _state(step=1), _extra(1))
  # E.g. a copy interrupted mid-way: a step's files under a tmp name.
  stray = tmp_path / f"5{_TMP_SUFFIX}"
  (stray / "state").mkdir(parents=True)
  (stray / "state" / "manifest.ocdbt").write_bytes(b"\x00" * 7)
  with CheckpointStore(tmp_path) as store:
    assert store.all_steps() == [1] and store.latest_step() == 1
    assert not stray.exists()


def test_bare_params_round_trip(tmp_path):
  params = _state()["params"]
  save_params(tmp_path / "final", params)
  _assert_same(restore_params(tmp_path / "final", _abstract(params)), params)
  restored = restore_params(tmp_path / "final")  # no target: onto one device
  jax.tree.map(np.testing.assert_array_equal, restored, params)
  with pytest.raises(ValueError, match="already exists"):
    save_params(tmp_path / "final", params)
  doubled = jax.tree.map(lambda x: x * 2, params)
  save_params(tmp_path / "final", doubled, overwrite=True)
  _assert_same(restore_params(tmp_path / "final", _abstract(params)), doubled)


def test_sharded_save_and_restore_on_8_devices(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                       "--xla_backend_optimization_level=0 "
                       "--xla_cpu_use_fusion_emitters=false",
             PYTHONPATH=os.pathsep.join([str(_REPO), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, __file__, "check_sharded_round_trip", str(tmp_path)],
                        env=env, cwd=_REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "CHECK OK" in proc.stdout, (
      f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


# --- Run in the 8-device subprocess. -----------------------------------------

def _sharded_init(rng):
  """Boxed params + adam state + step: `Partitioner.init` lays out all of it."""
  k1, k2, k3 = jax.random.split(rng, 3)
  box = nn.LogicallyPartitioned
  params = {
      "token_embedder/embedding": box(jax.random.normal(k1, (64, 16)), ("vocab", "embed")),
      "encoder/layers_0/mlp/wi/kernel": box(jax.random.normal(k2, (16, 32)), ("embed", "mlp")),
      "encoder/layers_0/mlp/wi/adapter/routing_logits":
          box(jax.random.uniform(k3, (3, 2, 4)), ("tasks", "routing_heads", "skills")),
  }
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  _, opt_state = tx.update(params, opt_state, params)  # non-zero moments, still boxed
  return {"params": params, "opt_state": opt_state, "step": jnp.asarray(3, jnp.int32)}


def check_sharded_round_trip(directory: str) -> None:
  assert jax.device_count() == 8
  partitioner = partitioning.Partitioner(partitioning.make_mesh(data=2, model=4))
  state, _ = partitioner.init(_sharded_init, jax.random.key(0))
  embedding = state["params"]["token_embedder/embedding"]
  assert tuple(embedding.sharding.spec) == ("model",)
  mu = state["opt_state"][0].mu["encoder/layers_0/mlp/wi/kernel"]
  assert tuple(mu.sharding.spec) == (None, "model")  # moments sharded like their params

  with CheckpointStore(os.path.join(directory, "ckpt")) as store:
    store.save(3, state, _extra(3))
    # Onto the saved layout: identical values and shardings.
    restored, extra = store.restore(target=_abstract(state))
    _assert_same(restored, state)
    assert extra == _extra(3)
    # Onto another layout (pure data parallelism): same values, new shardings.
    dp = partitioning.Partitioner(partitioning.make_mesh(data=8, model=1))
    dp_shardings = dp.param_shardings(jax.eval_shape(_sharded_init, jax.random.key(0)))
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          state, dp_shardings)
    restored, _ = store.restore(3, target=target)
    for r, e, s in zip(jax.tree.leaves(restored), jax.tree.leaves(state),
                       jax.tree.leaves(dp_shardings)):
      np.testing.assert_array_equal(np.asarray(r), np.asarray(e))
      assert r.sharding == s, (r.sharding, s)

  save_params(os.path.join(directory, "final"), state["params"])
  _assert_same(restore_params(os.path.join(directory, "final"), _abstract(state["params"])),
               state["params"])
  print("CHECK OK")


if __name__ == "__main__":
  globals()[sys.argv[1]](*sys.argv[2:])
