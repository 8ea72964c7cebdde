#!/usr/bin/env python3
"""Runs the `compile` stage over slices x meshes, one at a time, and tabulates the results.

  python scripts/scaling_table.py run  benchmarks/results/scaling.json 3b:v5e:2x4:2x4 11b:v5e:4x4:4x4
  python scripts/scaling_table.py table benchmarks/results/scaling.json [benchmarks/results/resident.json] > table.md
  python scripts/scaling_table.py resident results/resident.json 3b:v5e:2x4:8x1:f32 ...

A case is `size:topology:data x model`, size 3b | 11b (configs/experiments/
t0_3b.gin, with `compile_steps.model_size` t0_3b / t0pp_11b); append
`:f32` to store the frozen backbone in float32 (before the bf16 fix), `:noflops`
to skip the FLOPs extrapolation (one extra compile a step), `:all` to add the
decode step to multitask_train, adapt_train and score, or a `+`-joined step
list (`:score+adapt_train`) to compile only those, in that order. Each case is a
separate `nice run.py` process (the compile of a 3B step takes minutes and
several GB; its report, log and peak RSS go to results/scaling_runs/, git-ignored);
finished cases are kept in the JSON, so the script resumes. `table` prints the
measured steps and the model x slice x mesh x step grid ("not compiled" where
no compile ran).
`resident` computes, without compiling, the per-chip bytes of the train steps'
arguments (parameters, optimizer state, batch) from their shardings; given to
`table`, they mark the grid cells whose arguments alone exceed the chip's HBM.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"3b": "t0_3b", "11b": "t0pp_11b"}
STEPS = ("multitask_train", "adapt_train", "score", "decode")
GiB = 1024 ** 3


def _available_gib() -> float:
  with open("/proc/meminfo") as f:
    info = {line.split(":")[0]: int(line.split()[1]) for line in f}
  return info["MemAvailable"] / 1024 ** 2


def run_case(case: str, out_root: str) -> dict:
  size, chip, shape, mesh, *flags = case.split(":")
  data, model = mesh.split("x")
  out = os.path.join(out_root, case.replace(":", "_"))
  args = [sys.executable, os.path.join(ROOT, "run.py"),
          "--gin_file=configs/experiments/t0_3b.gin", "--gin.run.stage=compile",
          f"--gin.run.output_dir={out}", f"--gin.MeshConfig.topology={chip}:{shape}",
          f"--gin.MeshConfig.data={data}", f"--gin.MeshConfig.model={model}",
          f"--gin.compile_steps.model_size={SIZES[size]}",
          "--gin.compile_steps.fail_if_too_big=False"]
  named = [f for f in flags if set(f.split("+")) <= set(STEPS)]
  if named:  # e.g. ':adapt_train+score': only those steps
    steps = named[0].split("+")
  else:  # the decode step too with ':all'
    steps = list(STEPS) if "all" in flags else [s for s in STEPS if s != "decode"]
  args.append(f"--gin.compile_steps.steps={steps!r}")
  if "f32" in flags:
    args.append("--gin.mhr_jax.T5Config.param_dtype=float32")
  if "noflops" in flags:
    args.append("--gin.compile_steps.correct_flops=False")
  t0 = time.time()
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  rss_file = os.path.join(out_root, case.replace(":", "_") + ".maxrss")
  os.makedirs(out_root, exist_ok=True)
  # /usr/bin/time: this case's own peak RSS (getrusage's is the max over all children).
  with open(rss_file.replace(".maxrss", ".log"), "w") as log:
    proc = subprocess.run(["nice", "/usr/bin/time", "-f", "%M", "-o", rss_file, *args], cwd=ROOT,
                          stdout=log, stderr=subprocess.STDOUT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"})
  with open(rss_file.replace(".maxrss", ".log")) as log:
    lines = [l for l in log.read().splitlines() if l.strip()]
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  with open(rss_file) as f:
    max_rss_kib = int(f.read().split()[-1])
  record = {"case": case, "returncode": proc.returncode, "wall_seconds": round(time.time() - t0),
            "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime
                                 - before.ru_stime),
            "max_rss_gib": round(max_rss_kib / 1024 ** 2, 2)}
  report = os.path.join(out, "compile", "compile_report.json")
  if os.path.exists(report):  # written after every compile, so partial on a failure
    with open(report) as f:
      record["report"] = json.load(f)
  if proc.returncode != 0:
    errors = [l for l in lines if "error" in l.lower() or "STACK OVERFLOW" in l]
    record["error"] = (errors or lines or ["?"])[-1][:400]
  return record


def cmd_run(path: str, cases: list[str]) -> None:
  results = json.load(open(path)) if os.path.exists(path) else {}
  for case in cases:
    if case in results and "report" in results[case]:
      continue
    while _available_gib() < 7:
      time.sleep(30)  # other jobs share the machine
    print(f"{time.strftime('%H:%M:%S')} {case} ...", flush=True)
    results[case] = run_case(case, os.path.join(ROOT, "results", "scaling_runs"))
    r = results[case]
    print(f"  rc {r['returncode']}, {r['wall_seconds']} s wall, {r['cpu_seconds']} s cpu, "
          f"{r['max_rss_gib']} GiB rss {r.get('error', '')}", flush=True)
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)


SLICES = (("v5e-4", "v5e:2x2", 4), ("v5e-8", "v5e:2x4", 8), ("v5e-16", "v5e:4x4", 16),
          ("v4-8", "v4:2x2x1", 4))
GRID_STEPS = ("multitask_train", "adapt_train", "score")


def _measured(results: dict) -> dict:
  """{(size, topology, 'DxM', step): (step record, case record)} of every compiled step."""
  out = {}
  for case, r in results.items():
    size, chip, shape, mesh, *_ = case.split(":")
    for name, s in r.get("report", {}).get("steps", {}).items():
      out[(size, f"{chip}:{shape}", mesh, name)] = (s, r)
  return out


def _unmeasured_cell(resident: dict, case: str, name: str, hbm_bytes: int) -> str:
  """The grid cell of a step that was not compiled, from `resident` (may be empty).

  "cannot be laid out" where `resident` recorded a layout error; "does not fit" where
  the step's arguments alone exceed the chip's HBM (they are part of its total, so no
  compile is needed to know): train steps from their state + batch bytes, `score`
  from the parameter bytes of the adapt step, else of the multi-task step (the same
  frozen backbone; the scoring step's arguments include them); else "not compiled".
  """
  entry = resident.get(case, {})
  if entry.get(name, {}).get("layout_error"):
    return "**cannot be laid out**: its batch does not split over the data shards"
  if name == "score":
    nbytes = (entry.get("adapt_train", {}).get("params_bytes_per_chip") or
              entry.get("multitask_train", {}).get("params_bytes_per_chip"))
  else:
    nbytes = entry.get(name, {}).get("state_and_batch_bytes_per_chip")
  if nbytes is not None and nbytes > hbm_bytes:
    return (f"**does not fit**: arguments alone {nbytes / GiB:.2f} GiB > "
            f"{hbm_bytes / GiB:.0f} (not compiled)")
  return "not compiled"


def cmd_table(path: str, resident_path: Optional[str] = None) -> None:
  """Markdown: the measured steps (per-chip GiB), then the size x slice x mesh x step grid.

  With `resident_path` (written by `resident`), a cell that was not compiled but
  whose arguments alone exceed the chip's HBM reads "does not fit (arguments ...)".
  """
  sys.path.insert(0, ROOT)
  from mhr_jax.experiment.chips import chip_of_topology  # pylint: disable=g-import-not-at-top
  results = json.load(open(path))
  resident = json.load(open(resident_path)) if resident_path else {}
  g = lambda b: f"{b / GiB:.2f}"
  print("| model | slice | data x model | step | args | output | alias | temp | total GiB/chip "
        "| fits | lower s | compile s (wall) | process CPU s | peak RSS GiB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for (size, topo, mesh, name), (s, r) in _measured(results).items():
    hbm = r["report"]["hbm_bytes_per_chip"] / GiB
    mesh_txt = mesh.replace("x", " x ")
    if "argument_bytes" in s:
      cells = (f"{g(s['argument_bytes'])} | {g(s['output_bytes'])} | {g(s['alias_bytes'])} | "
               f"{g(s['temp_bytes'])} | **{g(s['total_bytes'])}** | "
               f"{'yes' if s['fits'] else '**no**'} ({hbm:.0f})")
    else:
      total = g(s["total_bytes"]) if "total_bytes" in s else "?"
      cells = f" | | | | **{total}** | **no** ({hbm:.0f}): compiler out of memory"
    print(f"| {SIZES[size]} | {topo} | {mesh_txt} | {name} | {cells} | "
          f"{s.get('lower_seconds', '')} | {s['compile_seconds']} | {r['cpu_seconds']} | "
          f"{r['max_rss_gib']} |")
  failed = [(c, r) for c, r in results.items() if r["returncode"] != 0]
  for case, r in failed:
    print(f"\nFailed: `{case}` (exit {r['returncode']}): {r.get('error', '')}")
  print("\n| model | slice | data x model | " + " | ".join(GRID_STEPS) + " |")
  print("|---|---|---|" + "---|" * len(GRID_STEPS))
  measured = _measured(results)
  for size in SIZES:
    for slice_name, topo, chips in SLICES:
      for mesh in (f"{chips}x1", f"{chips // 4}x4"):
        cells = []
        for name in GRID_STEPS:
          hit = measured.get((size, topo, mesh, name))
          if hit is None:
            cells.append(_unmeasured_cell(resident, f"{size}:{topo}:{mesh}", name,
                                          chip_of_topology(topo).hbm_bytes))
          else:
            s = hit[0]
            total = g(s["total_bytes"]) if "total_bytes" in s else "?"
            cells.append(f"{total} GiB, {'fits' if s['fits'] else '**does not fit**'}")
        print(f"| {SIZES[size]} | {slice_name} | {mesh.replace('x', ' x ')} | "
              + " | ".join(cells) + " |")


def cmd_resident(path: str, cases: list[str]) -> None:
  """Per-chip bytes of the train steps' arguments (state + batch) from the shardings alone."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, ROOT)
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mhr_jax import gin_cli  # pylint: disable=g-import-not-at-top
  from mhr_jax.experiment import compile as compile_stage, pipeline, stages  # pylint: disable=g-import-not-at-top,unused-import
  from mhr_jax.adapters import methods  # pylint: disable=g-import-not-at-top
  from mhr_jax.models import T5  # pylint: disable=g-import-not-at-top
  from mhr_jax.experiment.model_setup import example_batch  # pylint: disable=g-import-not-at-top
  out = {}
  for case in cases:
    size, chip, shape, mesh, *flags = case.split(":")
    data, model = mesh.split("x")
    gin.clear_config()
    gin_cli.parse([os.path.join(ROOT, "configs/experiments/t0_3b.gin")], [
        f"mhr_jax.MeshConfig.topology = '{chip}:{shape}'", f"mhr_jax.MeshConfig.data = {data}",
        f"mhr_jax.MeshConfig.model = {model}", f"compile_steps.model_size = '{SIZES[size]}'"]
        + (["mhr_jax.T5Config.param_dtype = 'float32'"] if "f32" in flags else []),
        [os.path.join(ROOT, "configs"), ROOT])
    mt = compile_stage.stage_settings(stages.train_multitask)
    ad = compile_stage.stage_settings(stages.adapt_heldout)
    _, partitioner = compile_stage._partitioner_for(mt, None)  # pylint: disable=protected-access
    config = compile_stage.resolve_model_config(SIZES[size], mt)
    mt_adapter = methods.multitask_adapter_config(mt["method"], mt["adapter_config"],
                                                  n_tasks=gin.query_parameter("compile_steps.n_tasks"))
    ad_adapter = compile_stage._adapt_adapter(ad["method"], mt_adapter, config, None)  # pylint: disable=protected-access
    out[case] = {}
    for name, stage, cfg, adapter in (("multitask_train", mt, "multitask", mt_adapter),
                                      ("adapt_train", ad, "adapt", ad_adapter)):
      try:
        built = compile_stage.build_train_step(
            T5(config, adapter=adapter), stage["method"], cfg, stage["optimizer"], stage["steps"],
            False, example_batch(stage["data"].batch_size, stage["data"].input_length,
                                 stage["data"].target_length),
            partitioner, single_task=cfg == "adapt")
        nbytes = sum(int(np.prod(a.sharding.shard_shape(a.shape))) * np.dtype(a.dtype).itemsize
                     for a in jax.tree.leaves(built.args))
      except ValueError as e:  # e.g. a batch that cannot split over the data shards
        out[case][name] = {"layout_error": str(e).splitlines()[0][:300]}
        print(case, name, "cannot be laid out:", out[case][name]["layout_error"], flush=True)
        continue
      out[case][name] = {
          "state_and_batch_bytes_per_chip": nbytes,
          **compile_stage._param_bytes(built.params_abstract, built.params_shardings)}  # pylint: disable=protected-access
    print(case, {k: round(v["state_and_batch_bytes_per_chip"] / GiB, 2)
                 for k, v in out[case].items() if "layout_error" not in v}, flush=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  if len(sys.argv) < 3 or sys.argv[1] not in ("run", "table", "resident"):
    print(__doc__, file=sys.stderr)
    sys.exit(2)
  if sys.argv[1] == "run":
    cmd_run(sys.argv[2], sys.argv[3:])
  elif sys.argv[1] == "resident":
    cmd_resident(sys.argv[2], sys.argv[3:])
  else:
    cmd_table(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
