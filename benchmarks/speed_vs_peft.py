"""Training-step throughput and peak memory: mhr_jax (MHR) vs PEFT's Poly/MHR (PyTorch, CPU).

Same small T5 v1.0 (relu, tied embeddings), same adapter layout (MHR on q and v
of every attention, PEFT's T5 default), frozen backbone, AdamW + grad-norm
clipping over the trainable parameters only, batches mixing task ids.

Each framework runs in its own worker process (in one process, XLA's CPU
thread pool made torch ~80x slower). Torch is run at 1 thread and at one
thread per core: on a loaded host its OpenMP pool degrades badly (measured
9.4 s/step at 2 threads vs 0.5 s at 1 with other jobs on the 2 cores), so the
headline ratio is against the *fastest* PEFT setting. With --repeats > 1,
repeats run in reverse order (ABBA) so load drift hits all variants alike. Throughput:
median seconds/step over all timed steps after warmup; JAX compile time is
reported separately. Peak memory: RSS sampled every 5 ms during the warmup steps and
2 steps after timing, minus the RSS right after setup (imports excluded; JAX's
setup includes compilation and optimizer state, torch's Adam state appears at
its first step); also the setup RSS delta and the lifetime peak RSS.
`jax.devices()[0].memory_stats()` is recorded when it returns something (None
on CPU in jax 0.10).

  python benchmarks/speed_vs_peft.py            # full (~1-3 min on 2 cores, load-dependent)
  python benchmarks/speed_vs_peft.py --quick    # d_model 64, 2+2 layers, a few steps
  python benchmarks/speed_vs_peft.py --size tiny # the embedded default's model and shapes
  python benchmarks/speed_vs_peft.py --device gpu --size base   # both on the GPU

On a GPU both frameworks run on the same device (torch: CUDA, eager, sdpa;
JAX: its default backend); step times are synchronised (loss read back to
the host after each step) and memory is the device allocator's peak
(`torch.cuda.max_memory_allocated`, JAX's `peak_bytes_in_use`) instead of RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from mhr_jax.adapters.config import AdapterConfig  # noqa: E402
from mhr_jax.models import T5Config  # noqa: E402

FULL = dict(vocab=512, d_model=256, num_layers=4, num_heads=4, d_kv=64, d_ff=1024,
            batch=16, input_len=64, target_len=32, rank=8, n_skills=8, n_heads=4, n_tasks=16)
QUICK = dict(FULL, d_model=64, num_layers=2, d_kv=16, d_ff=256, batch=8, input_len=32,
             target_len=16)
# The embedded default's sizes (configs/models/tiny.gin, synthetic.gin, mhr.gin): byte
# vocabulary, d_model 64, 2+2 layers, batch 32 of 9 -> 17 tokens, rank 4, 24 tasks
# (relu and tied embeddings as the other sizes, so both sides build the same T5).
TINY = dict(vocab=259, d_model=64, num_layers=2, num_heads=4, d_kv=16, d_ff=128,
            batch=32, input_len=9, target_len=17, rank=4, n_skills=8, n_heads=4, n_tasks=24)
# For a GPU: T5-base's width and depth (d_model 768, 12+12 layers), batch 32, 256 -> 64.
BASE = dict(vocab=32128, d_model=768, num_layers=12, num_heads=12, d_kv=64, d_ff=3072,
            batch=32, input_len=256, target_len=64, rank=8, n_skills=8, n_heads=4, n_tasks=16)
SIZES = {"full": FULL, "quick": QUICK, "tiny": TINY, "base": BASE}


def jax_runner(c, dropout, seed=0):
  config = T5Config(vocab_size=c["vocab"], d_model=c["d_model"], d_kv=c["d_kv"], d_ff=c["d_ff"],
                    num_layers=c["num_layers"], num_heads=c["num_heads"],
                    dropout_rate=dropout, feed_forward_proj="relu", tie_word_embeddings=True)
  adapter = AdapterConfig(kind="poly", rank=c["rank"], n_tasks=c["n_tasks"],
                          n_skills=c["n_skills"], n_heads=c["n_heads"], target_modules="qv")
  batch = common.random_batch(seed, c["batch"], c["input_len"], c["target_len"], c["vocab"],
                              c["n_tasks"])
  return common.JaxRunner(config, adapter, batch, seed=seed)


class TorchRunner:
  """PEFT PolyModel (n_splits = MHR heads) on transformers' T5, model.train()."""

  def __init__(self, c, dropout, threads, seed=0, device="cpu"):
    # Deferred: the torch side runs in its own process (see measure), never beside XLA.
    import peft  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    self.torch = torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = dict(vocab_size=c["vocab"], d_model=c["d_model"], d_kv=c["d_kv"], d_ff=c["d_ff"],
               num_layers=c["num_layers"], num_heads=c["num_heads"], dropout_rate=dropout,
               feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0,
               pad_token_id=0, eos_token_id=1)
    self.attn_implementation = "sdpa"
    try:
      base = transformers.T5ForConditionalGeneration(
          transformers.T5Config(**cfg, attn_implementation="sdpa"))
    except (ValueError, ImportError):
      self.attn_implementation = "eager"
      base = transformers.T5ForConditionalGeneration(
          transformers.T5Config(**cfg, attn_implementation="eager"))
    self.attn_implementation = getattr(base.config, "_attn_implementation",
                                       self.attn_implementation)
    self.model = peft.get_peft_model(base, peft.PolyConfig(
        task_type="SEQ_2_SEQ_LM", r=c["rank"], n_tasks=c["n_tasks"], n_skills=c["n_skills"],
        n_splits=c["n_heads"], target_modules=["q", "v"]))
    self.device = "cuda" if device == "gpu" else "cpu"
    self.model.to(self.device)
    self.model.train()
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    self.n_trainable = sum(p.numel() for p in self.params)
    self.opt = torch.optim.AdamW(self.params, lr=1e-3, weight_decay=0.0)
    b = common.random_batch(seed, c["batch"], c["input_len"], c["target_len"], c["vocab"],
                            c["n_tasks"])
    t = lambda x: torch.as_tensor(x, dtype=torch.long, device=self.device)
    self.inputs = dict(input_ids=t(b["encoder_input_tokens"]),
                       attention_mask=t(b["encoder_input_tokens"] > 0),
                       decoder_input_ids=t(b["decoder_input_tokens"]),
                       labels=t(b["decoder_target_tokens"]), task_ids=t(b["task_ids"]),
                       use_cache=False)

  def run(self, n):
    times = []
    for _ in range(n):
      t0 = time.perf_counter()
      self.opt.zero_grad(set_to_none=True)
      loss = self.model(**self.inputs).loss
      loss.backward()
      self.torch.nn.utils.clip_grad_norm_(self.params, 1.0)
      self.opt.step()
      float(loss.detach())
      times.append(time.perf_counter() - t0)
    return times


class RssSampler:
  """Max RSS seen by a 5 ms polling thread."""

  def __init__(self):
    self.peak = common.rss_bytes()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True)

  def _loop(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, common.rss_bytes())
      time.sleep(0.005)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, common.rss_bytes())


def worker(framework, c, dropout, threads, warmup, steps, device="cpu"):
  """Runs in its own subprocess: times `steps` steps, then samples RSS over a few more.

  Prints one line 'RESULT_JSON {...}'. One framework per process: with XLA's
  CPU thread pool alive in the same process, torch's steps ran ~80x slower
  (thread oversubscription), so the two are never mixed in one process.
  """
  if framework == "torch":
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import transformers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import peft  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  rss0 = common.rss_bytes()  # after imports
  t0 = time.perf_counter()
  if framework == "jax":
    runner = jax_runner(c, dropout)  # includes compilation
  else:
    runner = TorchRunner(c, dropout, threads, device=device)
  setup_s = time.perf_counter() - t0
  base = common.rss_bytes()  # model, frozen weights, (jax: optimizer state, executable)
  with RssSampler() as sampler:  # first steps: activations, grads, (torch: Adam state)
    runner.run(warmup)
  times = runner.run(steps)  # timed without the sampler thread
  with RssSampler() as sampler2:
    runner.run(2)
  peak = max(sampler.peak, sampler2.peak)
  out = {"framework": framework, "times_s": times, "setup_s": setup_s,
         "trainable_params": runner.n_trainable,
         "memory": {"rss_after_imports_mib": rss0 / 2**20,
                    "rss_after_setup_mib": base / 2**20,
                    "setup_rss_delta_mib": (base - rss0) / 2**20,
                    "step_peak_rss_delta_mib": (peak - base) / 2**20,
                    "process_peak_rss_mib": common.peak_rss_bytes() / 2**20}}
  if framework == "jax":
    out["compile_s"] = runner.compile_s
    try:
      stats = jax.devices()[0].memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    out["memory"]["jax_memory_stats"] = stats
    if stats and "peak_bytes_in_use" in stats:
      out["memory"]["jax_peak_bytes_in_use_mib"] = stats["peak_bytes_in_use"] / 2**20
  else:
    if device == "gpu":
      out["memory"]["torch_cuda_peak_mib"] = runner.torch.cuda.max_memory_allocated() / 2**20
    out["attn_implementation"] = runner.attn_implementation
    out["torch_threads"] = runner.torch.get_num_threads()
  print("RESULT_JSON " + json.dumps(out), flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--quick", action="store_true", help="same as --size quick")
  p.add_argument("--size", choices=sorted(SIZES), default=None,
                 help="model/batch size (default: full; 'base' is meant for a GPU)")
  p.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                 help="where both frameworks run")
  p.add_argument("--steps", type=int, default=5, help="timed steps per worker process")
  p.add_argument("--repeats", type=int, default=1,
                 help="worker processes per variant; repeats run in reverse order")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--dropout", type=float, default=0.0)
  p.add_argument("--threads", default=None,
                 help="comma-separated torch thread counts (default: 1,<cores>)")
  p.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
  p.add_argument("--out", default="speed_vs_peft.json")
  args = p.parse_args()
  size = args.size or ("quick" if args.quick else "full")
  c = SIZES[size]
  if args.device == "cpu":
    os.environ["JAX_PLATFORMS"] = "cpu"  # the workers inherit it
  cores = common.load_info()["affinity_cores"]
  thread_list = sorted({int(t) for t in (args.threads or f"1,{cores}").split(",")})

  if args.worker:
    worker(args.worker, c, args.dropout, thread_list[-1], args.warmup, args.steps, args.device)
    return

  load_before = common.load_info()
  print(f"config: {c}\nload before: {load_before}  torch threads: {thread_list}", flush=True)
  # On a GPU the torch thread count hardly matters: one torch variant.
  variants = ["jax"] + [f"torch@{t}" for t in (thread_list if args.device == "cpu"
                                                else thread_list[-1:])]
  order = []
  for r in range(args.repeats):
    order += variants if r % 2 == 0 else variants[::-1]
  runs = {v: [] for v in variants}
  for v in order:
    fw, _, th = v.partition("@")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", fw, "--dropout",
           str(args.dropout), "--threads", th or str(cores), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--size", size, "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT_JSON ")]
    if proc.returncode or not line:
      sys.exit(f"{v} worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    out = json.loads(line[-1][len("RESULT_JSON "):])
    out["loadavg_after"] = common.load_info()["loadavg_1_5_15"]
    runs[v].append(out)
    print(f"  {v:9s} median {common.median(out['times_s']) * 1e3:8.1f} ms/step  "
          f"load {out['loadavg_after']}", flush=True)
  load_after = common.load_info()

  tokens = c["batch"] * (c["input_len"] + c["target_len"])
  target_tokens = c["batch"] * c["target_len"]
  res = {}
  for v in variants:
    name = "mhr_jax" if v == "jax" else f"peft_torch_{v.split('@')[1]}threads"
    times = [t for o in runs[v] for t in o["times_s"]]
    med = common.median(times)
    last = runs[v][-1]
    res[name] = {"median_step_s": med, "min_step_s": min(times), "max_step_s": max(times),
                 "per_process_median_step_s": [common.median(o["times_s"]) for o in runs[v]],
                 "timed_steps": len(times), "tokens_per_s": tokens / med,
                 "target_tokens_per_s": target_tokens / med,
                 "trainable_params": last["trainable_params"],
                 "setup_s": [o["setup_s"] for o in runs[v]],
                 "memory": max((o["memory"] for o in runs[v]),
                               key=lambda m: m["step_peak_rss_delta_mib"]),
                 "loadavg_after": [o["loadavg_after"] for o in runs[v]]}
    if v == "jax":
      res[name]["compile_s"] = [o["compile_s"] for o in runs[v]]
    else:
      res[name]["attn_implementation"] = last["attn_implementation"]
      res[name]["torch_threads"] = last["torch_threads"]
  torch_names = [n for n in res if n.startswith("peft_torch")]
  best_torch = max(torch_names, key=lambda n: res[n]["tokens_per_s"])
  ratios = {n: res["mhr_jax"]["tokens_per_s"] / res[n]["tokens_per_s"] for n in torch_names}
  ratio = ratios[best_torch]

  rows = []
  for name, r in res.items():
    m = r["memory"]
    rows.append([name, f"{r['median_step_s'] * 1e3:.1f}", f"{r['tokens_per_s']:.0f}",
                 f"{common.median(r['compile_s']):.1f}" if "compile_s" in r else "-",
                 f"{m['step_peak_rss_delta_mib']:.1f}", f"{m['setup_rss_delta_mib']:.0f}",
                 f"{m['process_peak_rss_mib']:.0f}", _device_peak(m), r["trainable_params"]])
  print()
  print(common.table(rows, ["impl", "step ms (median)", "tokens/s", "compile s",
                            "step peak dRSS MiB", "setup dRSS MiB", "process peak RSS MiB",
                            "device peak MiB", "trainable"]))
  print()
  for n, v in ratios.items():
    print(f"throughput ratio mhr_jax / {n} = {v:.2f}x")
  print(f"headline (vs fastest PEFT setting, {best_torch}) = {ratio:.2f}x  "
        f"(target >= 2.0x: {'met' if ratio >= 2.0 else 'NOT met'})")
  print(f"load after: {load_after}")
  payload = {"benchmark": "speed_vs_peft", "size": size, "device": args.device, "config": c,
             "dropout": args.dropout, "torch_threads": thread_list, "tokens_per_step": tokens,
             "timing": {"warmup_steps": args.warmup, "steps_per_process": args.steps,
                        "order": order},
             "results": res, "ratios_throughput_mhr_jax_over": ratios,
             "fastest_peft": best_torch, "ratio_throughput_mhr_jax_over_peft": ratio,
             "target_ratio": 2.0, "target_met": ratio >= 2.0,
             "load_before": load_before, "load_after": load_after,
             "machine": common.machine_info(), "versions": _versions()}
  suffix = ("" if size == "full" else f"_{size}") + ("_gpu" if args.device == "gpu" else "")
  name = args.out.replace(".json", f"{suffix}.json")
  print("wrote", common.write_json(name, payload))


def _device_peak(memory) -> str:
  """The accelerator allocator's peak, where the framework reports one."""
  for key in ("jax_peak_bytes_in_use_mib", "torch_cuda_peak_mib"):
    if key in memory:
      return f"{memory[key]:.0f}"
  return "-"


def _versions():
  out = {}
  for mod in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft"):
    try:
      out[mod] = __import__(mod).__version__
    except Exception:  # pylint: disable=broad-except
      pass
  return out


if __name__ == "__main__":
  main()
