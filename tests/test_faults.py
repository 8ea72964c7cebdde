"""Fault injection (issue 12): preemption, NaN, corrupt checkpoints, config, locks, bad input.

The CLI tests drive `run.py` on a micro version of configs/default.gin (one
training task, 8 steps): in a subprocess where training or signals are
involved, through `run.main` in process for errors raised before any model is
built. Training subprocesses cost most of this file's CPU time, so there are
three (one uninterrupted run, `baseline`, made once per session for every
pytest-xdist worker; a SIGTERMed run and its rerun), sharing one persistent JAX
compilation cache. The NaN guard is
driven through the real `train_loop` and checkpoint callback with a scripted
step function (no compilation), and corrupt / non-finite checkpoints through
the real `load_multitask` on copies of `baseline`.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file

import run as run_cli
from mhr_jax import errors
from mhr_jax.checkpoints.orbax import CheckpointStore
from mhr_jax.experiment import stages
from mhr_jax.training import preemption
from mhr_jax.training.checkpointing import StoreCheckpoint, configured_overrides
from mhr_jax.training.loop import NonFiniteLossError, train_loop
from mhr_jax.param_tree import flatten as flatten_params
from mhr_jax.training.state import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
MICRO = [
    "--gin.mhr_jax.T5Config.d_model=16", "--gin.mhr_jax.T5Config.d_kv=4",
    "--gin.mhr_jax.T5Config.d_ff=32", "--gin.mhr_jax.T5Config.num_heads=2",
    "--gin.mhr_jax.T5Config.num_layers=1", "--gin.mhr_jax.T5Config.num_decoder_layers=1",
    "--gin.mhr_jax.AdapterConfig.n_skills=2", "--gin.mhr_jax.AdapterConfig.rank=2",
    "--gin.mhr_jax.AdapterConfig.n_heads=2", "--gin.mhr_jax.DataConfig.batch_size=4",
    "--gin.train_multitask.mixture=synthetic_up_def_then_up_mno_then_up_vwx",
    "--gin.train_multitask.checkpoint_every=3", "--gin.train_multitask.keep_checkpoints=3",
    "--gin.train_multitask.log_every=1", "--gin.train_multitask.show_progress=False",
    "--gin.run.stage=multitask",
]

# The SIGTERM test's only hook: from step 3 on each step sleeps 0.5 s, so a
# signal sent from outside once step 3's checkpoint exists lands mid-training.
SLOW_HOOK = """
import sys, time
sys.path.insert(0, {root!r})
from mhr_jax.training import step as step_module
real = step_module.JittedTrainStep.__call__
def slow(self, state, batch):
  state, metrics = real(self, state, batch)
  if int(state.step) >= 3:
    time.sleep(0.5)
  return state, metrics
step_module.JittedTrainStep.__call__ = slow
import run
sys.exit(run.main(sys.argv[1:]))
"""


def _session_dir(tmp_path_factory, worker_id: str) -> pathlib.Path:
  """A directory of this pytest session that every pytest-xdist worker sees."""
  base = tmp_path_factory.getbasetemp()
  return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def env(tmp_path_factory, worker_id):
  # One persistent JAX compilation cache for every training subprocess of the session.
  cache = _session_dir(tmp_path_factory, worker_id) / "faults_jax_cache"
  cache.mkdir(exist_ok=True)
  return {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
          "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def cli(env, output_dir, *extra, slow=False, wait=True):
  """run.py (or SLOW_HOOK around it) on the micro config; returns CompletedProcess/Popen."""
  argv = MICRO + [f"--gin.run.output_dir={output_dir}", f"--gin.train_multitask.steps={STEPS}",
                  *extra]
  cmd = ([sys.executable, "-c", SLOW_HOOK.format(root=ROOT)] if slow
         else [sys.executable, os.path.join(ROOT, "run.py")]) + argv
  if not wait:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def ckpt_dir(output_dir):
  return os.path.join(output_dir, "multitask", "checkpoints")


def steps_on_disk(output_dir):
  return sorted(int(d) for d in os.listdir(ckpt_dir(output_dir)) if d.isdigit())


def restore(output_dir, step=None):
  with CheckpointStore(ckpt_dir(output_dir)) as store:
    return store.restore(step)


def assert_bit_identical(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def error_lines(stderr):
  """stderr lines that are not logging (INFO/WARNING lines carry a timestamp)."""
  return [l for l in stderr.splitlines() if l.strip() and not l[:2].isdigit()]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


# The tests that use `baseline`: scheduled first and together (tests/conftest.py), on
# the worker that makes it, so that no other worker waits for it.
USES_BASELINE = pytest.mark.heavy


@pytest.fixture(scope="session")
def baseline(env, tmp_path_factory, worker_id):
  """One uninterrupted run: checkpoints 3, 6 and 8 (made once per session, under a lock).

  Whichever pytest-xdist worker first needs it runs it; the other waits and reuses it.
  """
  root = _session_dir(tmp_path_factory, worker_id)
  out = str(root / "faults_baseline" / "run")
  with open(root / "faults_baseline.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(out + ".done"):
      proc = cli(env, out)
      assert proc.returncode == 0, proc.stderr[-3000:]
      open(out + ".done", "w").close()
  assert steps_on_disk(out) == [3, 6, 8]
  return out


def copy_run(baseline, tmp_path):
  out = str(tmp_path / "run")
  shutil.copytree(baseline, out)
  os.remove(os.path.join(out, ".lock"))
  return out


# --- 2 + 8. SIGTERM, resume, history ---------------------------------------------


@USES_BASELINE
def test_sigterm_saves_exits_143_and_rerun_is_bit_identical(env, baseline, tmp_path):
  out = str(tmp_path / "run")
  proc = cli(env, out, slow=True, wait=False)
  deadline = time.time() + 500
  while not os.path.isdir(os.path.join(ckpt_dir(out), "3")):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-3000:]
  lines = error_lines(err)
  assert len(lines) == 1 and lines[0].startswith("run.py: preempted at step "), err[-3000:]
  assert lines[0].endswith("; checkpoint saved; rerun the same command to resume")
  stopped = int(lines[0].split("step ")[1].split(";")[0])
  assert 3 < stopped < STEPS and steps_on_disk(out)[-1] == stopped  # the step it was in
  assert "Traceback" not in err
  resumed = cli(env, out)  # the same command, without the slow hook
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert resumed.stderr.count("resumed from step") == 1
  assert f"resumed from step {stopped}" in resumed.stderr
  assert_bit_identical(restore(out, STEPS)[0], restore(baseline, STEPS)[0])
  with open(os.path.join(out, "multitask", "train_history.json")) as f:
    assert [h["step"] for h in json.load(f)] == list(range(1, STEPS + 1))


def test_signal_outside_training_and_second_signal():
  # Outside a train loop there is nothing to save: Preempted at once, exit 143.
  with preemption.handle_signals():
    with pytest.raises(preemption.Preempted) as e:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)
  assert e.value.exit_code == 143 and "outside training" in str(e.value)
  # Inside one, the first SIGINT only sets the flag; a second aborts at once (130).
  code = ("import os, signal, sys, time; sys.path.insert(0, sys.argv[1]); "
          "from mhr_jax.training import preemption\n"
          "with preemption.handle_signals(), preemption.deferred():\n"
          "  os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)\n"
          "  print('flag', preemption.requested(), flush=True)\n"
          "  os.kill(os.getpid(), signal.SIGINT); time.sleep(5); print('not reached')")
  proc = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 130 and proc.stdout.split() == ["flag", str(int(signal.SIGINT))]
  assert proc.stderr.strip().splitlines() == [
      "SIGINT again: aborting without saving (the last complete checkpoint is kept)"]


# --- 1. NaN ------------------------------------------------------------------------


def _scripted_run(tmp_path, *, nan_params_after=None, nan_loss_at=None, log_every=100,
                  keep_last=1):
  """The real train_loop + checkpoint callback, with a step function that turns NaN on cue."""

  def step_fn(state, batch):
    step = int(state.step) + 1
    w = state.trainable["w"] + 1.0
    if nan_params_after is not None and step >= nan_params_after:
      w = w * jnp.nan
    loss = jnp.nan if step == nan_loss_at else 1.0 / step
    return state.replace(step=state.step + 1, trainable={"w": w}), {"loss": jnp.float32(loss)}

  state = TrainState.create({"w": jnp.zeros(3)}, lambda k: True, optax.sgd(0.1),
                            jnp.zeros(2, jnp.uint32))
  store = CheckpointStore(str(tmp_path / "ckpt"), save_every_steps=3, keep_last=keep_last)
  batches = iter(lambda: {"encoder_input_tokens": np.ones((1, 2), np.int32),
                          "decoder_loss_weights": np.ones(1)}, None)
  train_loop(state, step_fn, batches, 12, log_every=log_every, show_progress=False,
             checkpoint_fn=StoreCheckpoint(store, {}, 12, "nan"), description="nan")
  return store


def test_nan_parameters_never_reach_a_checkpoint(tmp_path):
  # Parameters turn NaN at step 8, whose loss is finite: only the state check
  # before the step-9 checkpoint sees it. keep_last=1 keeps step 6.
  with pytest.raises(NonFiniteLossError, match="became non-finite at step 9") as e:
    _scripted_run(tmp_path, nan_params_after=8)
  assert "\n" not in str(e.value) and "not checkpointed" in str(e.value)
  store = CheckpointStore(str(tmp_path / "ckpt"))
  assert store.all_steps() == [6]
  state, extra = store.restore()
  assert int(state["step"]) == 6 and extra["planned_steps"] == 12


def test_nan_loss_names_the_first_bad_step(tmp_path):
  with pytest.raises(NonFiniteLossError,
                     match=r"loss became nan at step 5 \(the first non-finite step\); no "
                           "checkpoint was written from it"):
    _scripted_run(tmp_path, nan_loss_at=5, keep_last=2)
  assert CheckpointStore(str(tmp_path / "ckpt")).all_steps() == [3]


# --- 3 + 1 + 4. corrupt / non-finite checkpoints, unfinished runs ---------------------


def _truncate_largest_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  victim = max(files, key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  return victim


def _nan_copy(out, step):
  """Rewrites `step` with every float array NaN (as older code could save)."""
  state, extra = restore(out, step)
  shutil.rmtree(os.path.join(ckpt_dir(out), str(step)))
  bad = jax.tree.map(lambda x: x * np.nan if np.issubdtype(x.dtype, np.floating) else x, state)
  with CheckpointStore(ckpt_dir(out)) as store:
    store.save(step, bad, extra, force=True)


@USES_BASELINE
def test_unreadable_and_nonfinite_checkpoints_fall_back(baseline, tmp_path, caplog):
  out = copy_run(baseline, tmp_path)
  _truncate_largest_file(os.path.join(ckpt_dir(out), "8", "state"))
  _nan_copy(out, 6)
  _, _, params, extra = stages.load_multitask(os.path.join(out, "multitask"))
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert len(warnings) == 3, warnings
  assert warnings[0].startswith(f"checkpoint step 8 in {ckpt_dir(out)}/8 is unreadable (")
  assert warnings[1].startswith(f"checkpoint step 6 in {ckpt_dir(out)}/6 is non-finite (")
  # 4. step 3 of 8 planned: the eval/adapt stages say so.
  assert "unfinished run (step 3 of 8 planned)" in warnings[2]
  state_3, _ = restore(baseline, 3)
  assert_bit_identical(flatten_params(params), {**state_3["frozen"], **state_3["trainable"]})
  assert extra["planned_steps"] == STEPS and [h["step"] for h in extra["history"]] == [1, 2, 3]


@USES_BASELINE
def test_no_readable_checkpoint_fails_in_one_line(baseline, tmp_path):
  out = copy_run(baseline, tmp_path)
  for step in (3, 8):
    _truncate_largest_file(os.path.join(ckpt_dir(out), str(step), "state"))
  _nan_copy(out, 6)
  with pytest.raises(errors.CheckpointError) as e:
    restore(out)
  assert "\n" not in str(e.value)
  assert "tried steps 8: unreadable, 6: non-finite, 3: unreadable" in str(e.value)


# --- 5. another config on the same output_dir ----------------------------------------


@USES_BASELINE
def test_other_config_on_the_same_output_dir_is_one_line(baseline, tmp_path, capsys):
  out = copy_run(baseline, tmp_path)
  argv = MICRO + [f"--gin.run.output_dir={out}", f"--gin.train_multitask.steps={STEPS}",
                  "--gin.mhr_jax.AdapterConfig.n_skills=3"]
  assert run_cli.main(argv) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f"run.py: error: {ckpt_dir(out)} holds checkpoints of another configuration "
      "(adapter_config.n_skills: saved 2, now 3); use another output_dir, or delete "
      f"{ckpt_dir(out)} to start over"]


@USES_BASELINE
def test_overrides_the_saved_config_wins_over_are_reported(baseline):
  _, extra = restore(baseline, 8)
  gin.parse_config(["mhr_jax.AdapterConfig.n_skills = 5", "mhr_jax.AdapterConfig.rank = 2",
                    "train_multitask.method = 'mhr'"])
  assert configured_overrides(extra) == ["adapter_config.n_skills: checkpoint 2, configured 5"]


# --- 6. lock ---------------------------------------------------------------------


@USES_BASELINE
def test_a_second_run_on_the_output_dir_is_refused(baseline, tmp_path, capsys):
  out = copy_run(baseline, tmp_path)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
       "from mhr_jax.experiment import run_lock; run_lock.hold(sys.argv[2]); print('held', "
       "flush=True); time.sleep(60)", ROOT, out], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    argv = MICRO + [f"--gin.run.output_dir={out}", f"--gin.train_multitask.steps={STEPS}"]
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"run.py: error: output_dir {out} is in use by PID {holder.pid}; wait for "
                   "that run to finish, or use another output_dir"]
  finally:
    holder.kill()
    holder.wait()


# --- 7. bad input --------------------------------------------------------------------


def _truncated_hf_checkpoint(tmp_path):
  d = tmp_path / "hf"
  d.mkdir()
  (d / "config.json").write_text(json.dumps({"d_model": 16}))
  save_file({"shared.weight": np.zeros((300, 16), np.float32)}, str(d / "model.safetensors"))
  with open(d / "model.safetensors", "r+b") as f:
    f.truncate(1000)
  return str(d)


@pytest.mark.parametrize("case", ["method", "mixture", "steps_abc", "steps_negative",
                                  "batch_size_zero", "truncated_safetensors", "file_output_dir",
                                  "readonly_output_dir"])
def test_bad_input_is_exit_2_and_one_line(case, tmp_path, capsys):
  out = str(tmp_path / "out")
  args, needle = {
      "method": (["--gin.train_multitask.method=mhrr"],
                 "unknown train_multitask.method 'mhrr' (did you mean 'mhr'?); valid choices: "),
      "mixture": (["--gin.train_multitask.mixture=synthetic_trian"],
                  "unknown task or mixture 'synthetic_trian'; did you mean one of"),
      "steps_abc": (["--gin.train_multitask.steps=abc"],
                    "train_multitask.steps='abc' is invalid: expected a positive integer"),
      "steps_negative": (["--gin.train_multitask.steps=-5"],
                         "train_multitask.steps=-5 is invalid: expected a positive integer"),
      "batch_size_zero": (["--gin.mhr_jax.DataConfig.batch_size=0"],
                          "train_multitask.data.batch_size=0 is invalid: expected a positive"),
      "truncated_safetensors": (
          [f"--gin.train_multitask.hf_checkpoint='{_truncated_hf_checkpoint(tmp_path)}'"],
          "model.safetensors ("),
      "file_output_dir": ([], f"output_dir {out!r} is a file, not a directory"),
      "readonly_output_dir": ([], f"output_dir {out + '/sub'!r} is not a writable directory"),
  }[case]
  if case == "file_output_dir":
    open(out, "w").close()
  if case == "readonly_output_dir":
    os.mkdir(out)
    os.chmod(out, 0o500)
    if os.access(out, os.W_OK):
      pytest.skip("running as root: permissions do not make a directory read-only")
    out += "/sub"
  argv = [a for a in MICRO if "steps=" not in a] + [f"--gin.run.output_dir={out}"]
  argv += [f"--gin.train_multitask.steps={STEPS}"] if case != "steps_abc" else []
  rc = run_cli.main(argv + args)
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1, err
  assert err[0].startswith("run.py: error: ") and needle in err[0], err[0]
  if case == "truncated_safetensors":
    assert "model.safetensors" in err[0] and "truncated" in err[0]


@pytest.mark.heavy
def test_bad_input_from_a_real_process_is_one_stderr_line(env, tmp_path):
  proc = cli(env, str(tmp_path / "out"), "--gin.mhr_jax.DataConfig.batch_size=0")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "run.py: error: train_multitask.data.batch_size=0 is invalid: expected a positive integer"]


def test_disk_full_is_one_line_and_removes_the_partial_save(tmp_path):
  mnt = tmp_path / "small"
  mnt.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  try:
    with CheckpointStore(str(mnt / "ckpt")) as store:
      with pytest.raises(errors.DiskFullError) as e:
        store.save(1, {"w": np.random.RandomState(0).rand(256, 256).astype(np.float32)},
                   {"x": 1}, force=True)
      msg = str(e.value)
      assert "\n" not in msg and "disk full while writing checkpoint step 1" in msg
      assert os.listdir(mnt / "ckpt") == []
  finally:
    subprocess.run(["umount", str(mnt)], check=False)
