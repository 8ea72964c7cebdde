"""Shared helpers of the benchmarks: JAX train-step construction, timing, load, memory."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from mhr_jax.adapters.config import AdapterConfig  # noqa: E402
from mhr_jax.adapters.methods import trainable_predicate  # noqa: E402
from mhr_jax.experiment.model_setup import init_params  # noqa: E402
from mhr_jax.models import T5, T5Config  # noqa: E402
from mhr_jax.partitioning import Partitioner, make_mesh  # noqa: E402
from mhr_jax.training.optimizer import OptimizerConfig  # noqa: E402
from mhr_jax.training.trainer import Trainer  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Constant LR, no warmup: the schedule is irrelevant to speed and easy to match in torch.
OPT = OptimizerConfig(name="adamw", learning_rate=1e-3, schedule="constant",
                      warmup_fraction=0.0, weight_decay=0.0, clip_grad_norm=1.0)


def random_batch(seed: int, batch: int, input_len: int, target_len: int, vocab: int,
                 n_tasks: int, single_task: bool = False) -> dict:
  """Random tokens in [2, vocab) (no padding), all targets weighted, random task ids."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, (batch, input_len), dtype=np.int32)
  tgt = rng.integers(2, vocab, (batch, target_len), dtype=np.int32)
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  if single_task:
    task_ids = np.full((batch,), rng.integers(0, n_tasks), np.int32)
  else:
    task_ids = rng.integers(0, n_tasks, (batch,), dtype=np.int32)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": tgt, "decoder_loss_weights": np.ones_like(tgt),
          "task_ids": task_ids}


def method_of(adapter: AdapterConfig) -> str:
  if adapter.kind == "lora":
    return "lora"
  return "mhr" if adapter.n_heads > 1 else "poly"


def build_jax_step(config: T5Config, adapter: AdapterConfig, *, single_task: bool = False,
                   seed: int = 0, optimizer: OptimizerConfig = OPT):
  """(jitted step donating the non-frozen state, initial TrainState, trainable count, partitioner)."""
  model = T5(config, adapter=adapter)
  partitioner = Partitioner(make_mesh(data=1, model=1, devices=jax.devices()[:1]))
  params = init_params(model, jax.random.PRNGKey(seed), partitioner)
  stage = "adapt" if adapter.kind == "lora" else "multitask"
  trainer = Trainer(model, optimizer, 1000, partitioner, single_task=single_task)
  state = trainer.init_state(params, trainable_predicate(method_of(adapter), stage), seed + 1)
  n_trainable = int(sum(np.prod(v.shape) for v in state.trainable.values()))
  step = trainer.jit_step(jax.tree.map(lambda x: x.sharding, state))
  return step, state, n_trainable, partitioner


class JaxRunner:
  """Holds a compiled step and its (donated, hence rethreaded) state."""

  def __init__(self, config, adapter, batch, *, single_task=False, seed=0, optimizer=OPT):
    warnings.filterwarnings("ignore", message=".*donated buffers.*")
    self.step, self.state, self.n_trainable, partitioner = build_jax_step(
        config, adapter, single_task=single_task, seed=seed, optimizer=optimizer)
    self.batch = partitioner.shard_batch(batch)
    # The first call traces and compiles (and runs one step, negligible next to compiling).
    t0 = time.perf_counter()
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics["loss"])
    self.compile_s = time.perf_counter() - t0

  def run(self, n: int) -> list[float]:
    """Times n steps (each synchronised); returns seconds per step."""
    times = []
    for _ in range(n):
      t0 = time.perf_counter()
      self.state, metrics = self.step(self.state, self.batch)
      jax.block_until_ready((metrics["loss"], self.state.trainable))
      times.append(time.perf_counter() - t0)
    return times


def median(xs):
  return statistics.median(xs)


def load_info() -> dict:
  """Host load, so readers can judge timings taken on a shared machine."""
  try:
    la = os.getloadavg()
  except OSError:
    la = (float("nan"),) * 3
  return {"loadavg_1_5_15": [round(x, 2) for x in la], "cpu_count": os.cpu_count(),
          "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
          else os.cpu_count()}


def machine_info() -> dict:
  info = {"platform": platform.platform(), "python": platform.python_version(),
          "processor": platform.processor() or platform.machine(),
          "jax": jax.__version__, "jax_backend": jax.default_backend(),
          "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
          "date": datetime.date.today().isoformat()}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          info["cpu_model"] = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return info


def rss_bytes() -> int:
  return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def write_json(name: str, payload: dict) -> str:
  """Writes results/`name` (or `name` itself if absolute) atomically; returns the path."""
  path = os.path.join(RESULTS_DIR, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=False)
  os.replace(tmp, path)
  return path


def table(rows: list[list], header: list[str]) -> str:
  cells = [header] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                            enumerate(zip(r, widths)))
  lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]
  return "\n".join(lines)
