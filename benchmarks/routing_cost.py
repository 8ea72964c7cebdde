"""What routing costs: train-step time of LoRA vs Poly vs MHR, and how it scales.

All variants are mhr_jax train steps (jit, donated state, frozen backbone,
AdamW over the adapter) on the same small T5 and batch, adapters on q, k, v, o
of every attention, same rank. Sections:

  methods:  LoRA, Poly (1 head), MHR with 2 / 4 / 8 heads   (target: MHR-8 <= 1.10x LoRA)
  n_tasks:  MHR-4 with 10 -> 10,000 routing rows            (target: <= 1.05x of 10 tasks)
            with dense AdamW, and with the row-sparse routing update
            (OptimizerConfig.sparse_routing) at 10 and 10,000 tasks
  n_skills: MHR-4 with 2 -> 32 skills
  batches:  MHR-4, mixed task ids vs one task per batch, without / with the
            `single_task=True` fast path
  shapes:   LoRA and MHR-4 at batch 8 -> 32 and input length 64 -> 256
            (MHR's ratio to LoRA as the batch and the sequence grow)

Every variant is compiled first; then timed blocks of all variants are
interleaved over several rounds (so load drift on a shared host hits all
alike) and the median step time over all timed steps is reported.

  python benchmarks/routing_cost.py           # ~2-3 min on 2 cores
  python benchmarks/routing_cost.py --quick   # tiny model, fewer variants (~1 min)
  python benchmarks/routing_cost.py --quick --variants lora,mhr8   # only these variants

Each variant costs its own compilations (the model's initialisation and its
train step, ~10-30 CPU-seconds each on a 2-core host): the run time is
compilation, not steps. A section, target or ratio is reported only when
its variants ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from mhr_jax.adapters.config import AdapterConfig  # noqa: E402
from mhr_jax.models import T5Config  # noqa: E402

FULL = dict(vocab=512, d_model=128, num_layers=2, num_heads=4, d_kv=32, d_ff=512,
            batch=8, input_len=64, target_len=32, rank=8, n_skills=8, n_tasks=16, heads=4)
QUICK = dict(FULL, d_model=64, d_kv=16, d_ff=256, input_len=32, target_len=16)


def variants(c, quick):
  """name -> (adapter kwargs, single_task batch?, single_task fast path?, shape overrides,
  sparse routing update?)."""
  base = dict(kind="poly", n_heads=c["heads"], n_tasks=c["n_tasks"], n_skills=c["n_skills"])
  v = {"lora": (dict(kind="lora"), False, False),
       "poly": (dict(base, n_heads=1), False, False)}
  for h in ((8,) if quick else (2, 4, 8)):
    v[f"mhr{h}"] = (dict(base, n_heads=h), False, False)
  v[f"mhr{c['heads']}"] = (base, False, False)
  for n in ((10, 10_000) if quick else (10, 100, 1_000, 10_000)):
    v[f"tasks{n}"] = (dict(base, n_tasks=n), False, False)
  for s in ((2, 32) if quick else (2, 8, 32)):
    v[f"skills{s}"] = (dict(base, n_skills=s), False, False)
  v["single_task_batch"] = (base, True, False)
  v["single_task_fast_path"] = (base, True, True)
  v = {k: (*x, {}, False) for k, x in v.items()}
  for n in (10, 10_000):
    v[f"sparse_tasks{n}"] = (dict(base, n_tasks=n), False, False, {}, True)
  if not quick:
    for tag, shape in (("b32", dict(batch=32)), ("s256", dict(input_len=256))):
      v[f"lora_{tag}"] = (dict(kind="lora"), False, False, shape, False)
      v[f"mhr{c['heads']}_{tag}"] = (base, False, False, shape, False)
  return v


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--rounds", type=int, default=None)
  p.add_argument("--steps", type=int, default=None, help="timed steps per block")
  p.add_argument("--out", default="routing_cost.json")
  p.add_argument("--variants", default=None,
                 help="comma-separated subset of the variants to run (default: all)")
  args = p.parse_args()
  c = QUICK if args.quick else FULL
  rounds = args.rounds or (3 if args.quick else 6)
  steps = args.steps or (3 if args.quick else 5)
  config = T5Config(vocab_size=c["vocab"], d_model=c["d_model"], d_kv=c["d_kv"], d_ff=c["d_ff"],
                    num_layers=c["num_layers"], num_heads=c["num_heads"], dropout_rate=0.0)
  load_before = common.load_info()
  print(f"config: {c}\nload before: {load_before}", flush=True)

  selected = variants(c, args.quick)
  if args.variants:
    wanted = args.variants.split(",")
    unknown = [n for n in wanted if n not in selected]
    if unknown:
      p.error(f"--variants: unknown {unknown}; valid choices: {list(selected)}")
    selected = {n: v for n, v in selected.items() if n in wanted}
  runners = {}
  meta = {}
  for name, (kw, single_batch, fast, shape, sparse) in selected.items():
    adapter = AdapterConfig(rank=c["rank"], target_modules="attention", **kw)
    cs = {**c, **shape}
    batch = common.random_batch(0, cs["batch"], cs["input_len"], cs["target_len"], c["vocab"],
                                adapter.n_tasks, single_task=single_batch)
    t0 = time.perf_counter()
    opt = dataclasses.replace(common.OPT, sparse_routing=sparse)
    r = common.JaxRunner(config, adapter, batch, single_task=fast, optimizer=opt)
    r.run(2)  # warmup
    runners[name] = r
    meta[name] = {"adapter": {k: getattr(adapter, k) for k in
                              ("kind", "rank", "n_tasks", "n_skills", "n_heads")},
                  "single_task_batch": single_batch, "single_task_fast_path": fast,
                  "sparse_routing": sparse,
                  "batch": cs["batch"], "input_len": cs["input_len"],
                  "compile_s": r.compile_s, "setup_s": time.perf_counter() - t0,
                  "trainable_params": r.n_trainable}
    print(f"  built {name:22s} compile {r.compile_s:5.1f}s", flush=True)

  times = {n: [] for n in runners}
  names = list(runners)
  for rd in range(rounds):
    for n in (names if rd % 2 == 0 else names[::-1]):
      times[n].extend(runners[n].run(steps))
  load_after = common.load_info()
  med = {n: common.median(t) for n, t in times.items()}

  def row(n, ref):
    return [n, f"{med[n] * 1e3:.2f}", f"{med[n] / med[ref]:.3f}", meta[n]["trainable_params"],
            f"{meta[n]['compile_s']:.1f}"]

  header = ["variant", "step ms (median)", "ratio", "trainable", "compile s"]
  heads = f"mhr{c['heads']}"
  sections = {
      "methods (ratio vs LoRA)": ("lora", [n for n in names if n in ("lora", "poly")
                                            or (n.startswith("mhr") and "_" not in n)]),
      f"n_tasks, MHR-{c['heads']} (ratio vs 10 tasks)": (
          "tasks10", [n for n in names if n.startswith("tasks")]),
      f"n_tasks, MHR-{c['heads']}, sparse routing update (ratio vs 10 tasks, dense)": (
          "tasks10", [n for n in names if n.startswith("sparse_tasks")]),
      f"n_skills, MHR-{c['heads']} (ratio vs 2 skills)": (
          "skills2", [n for n in names if n.startswith("skills")]),
      f"batches, MHR-{c['heads']} (ratio vs mixed task ids)": (
          heads, [heads, "single_task_batch", "single_task_fast_path"]),
  }
  for tag, what in (("b32", "batch 32"), ("s256", "input length 256")):
    sections[f"{what} (ratio vs LoRA at that shape)"] = (
        f"lora_{tag}", [f"lora_{tag}", f"{heads}_{tag}"])
  for title, (ref, members) in sections.items():
    members = [n for n in members if n in med]
    if ref in med and members:
      print(f"\n{title}")
      print(common.table([row(n, ref) for n in members], header))

  # (numerator, denominator[, target]): reported when both variants ran.
  tasks_max = max((n for n in names if n.startswith("tasks")), key=lambda n: int(n[5:]),
                  default="tasks10000")
  targets = {"mhr8_over_lora": ("mhr8", "lora", 1.10),
             f"{tasks_max}_over_tasks10": (tasks_max, "tasks10", 1.05),
             "sparse_tasks10000_over_tasks10": ("sparse_tasks10000", "tasks10", 1.05)}
  ratios = {"poly_over_lora": ("poly", "lora"),
            "sparse_tasks10_over_tasks10": ("sparse_tasks10", "tasks10"),
            "skills32_over_skills2": ("skills32", "skills2"),
            "single_task_fast_path_over_mixed": ("single_task_fast_path", heads),
            "single_task_fast_path_over_single_task_batch":
                ("single_task_fast_path", "single_task_batch")}
  for tag in ("b32", "s256"):
    ratios[f"{heads}_over_lora_{tag}"] = (f"{heads}_{tag}", f"lora_{tag}")
    ratios[f"lora_{tag}_over_lora"] = (f"lora_{tag}", "lora")
  ratios[f"{heads}_over_lora"] = (heads, "lora")
  ran = lambda a, b: a != b and a in med and b in med  # (tasks10 alone: no tasks ratio)
  checks = {k: {"value": med[a] / med[b], "target": t, "met": med[a] / med[b] <= t}
            for k, (a, b, t) in targets.items() if ran(a, b)}
  extra = {k: med[a] / med[b] for k, (a, b) in ratios.items() if ran(a, b)}
  print("\ntargets:")
  for k, v in checks.items():
    print(f"  {k:34s} {v['value']:.3f}  (target <= {v['target']:.2f}: "
          f"{'met' if v['met'] else 'NOT met'})")
  for k, v in extra.items():
    print(f"  {k:34s} {v:.3f}")
  print(f"load after: {load_after}")
  payload = {"benchmark": "routing_cost", "quick": args.quick, "backend": jax.default_backend(),
             "config": c,
             "target_modules": "attention",
             "timing": {"warmup_steps": 2, "rounds": rounds, "steps_per_block": steps},
             "median_step_s": med, "all_step_s": times, "variants": meta,
             "checks": checks, "ratios": extra, "load_before": load_before,
             "load_after": load_after, "machine": common.machine_info()}
  suffix = ("_quick" if args.quick else "") + ("_gpu" if jax.default_backend() == "gpu" else "")
  name = args.out.replace(".json", f"{suffix}.json")
  print("wrote", common.write_json(name, payload))


if __name__ == "__main__":
  main()
