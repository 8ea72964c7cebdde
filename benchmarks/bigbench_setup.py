"""Setup cost of BIG-bench training at 1,000 tasks: from the command to the first step.

  python benchmarks/bigbench_setup.py [--cache_dir DIR] [--skip_run] [--skip_data] [--out PATH]

Needs a prepared cache (`python -m tasks.bigbench prepare`; default
$MHR_JAX_BIGBENCH_DIR). Two measurements, each in a fresh subprocess:

* `data`: `import tasks` (registers the 1,001 BIG-bench tasks), then the first batch
  of the 959-task training mixture at configs/experiments/bigbench.gin's lengths and
  batch size; wall and CPU seconds per phase.
* `first_step`: the real command, `python run.py --gin_file=configs/experiments/bigbench.gin`
  (multi-task stage, the progress bar at every step), until its bar shows step 1
  (command -> imports -> registration -> model init -> first batch -> compile -> step 1);
  then the child is killed. `until_training_starts` is the same three numbers when the
  bar first shows 0/100 (everything built; step 1's batch, compile and run still
  ahead). Twice: `cold` with an empty JAX compilation cache (a first run), `warm`
  with the cache the cold run filled (every later run of the config;
  mhr_jax/experiment/compilation_cache.py).

Reported for each: wall seconds, CPU seconds (user + sys; the machine may be shared, so
CPU time is the comparable number; load averages are recorded) and peak resident memory
(ru_maxrss of the data child; VmHWM of the run.py child at step 1).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "bigbench_setup.json")
GIN = "configs/experiments/bigbench.gin"

_DATA_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
def cpu():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime
out = {{}}
t = time.time()
import tasks
from tasks import registry
out["import_and_register"] = {{"wall_s": time.time() - t, "cpu_s": cpu(),
                               "tasks": len(registry.task_names("bigbench"))}}
t, c = time.time(), cpu()
batches = tasks.get_batches("bigbench_train", "train", {lengths!r}, {batch}, seed=0)
next(batches)
out["first_batch"] = {{"wall_s": time.time() - t, "cpu_s": cpu() - c}}
t, c = time.time(), cpu()
for _ in range(20):
  next(batches)
out["next_20_batches"] = {{"wall_s": time.time() - t, "cpu_s": cpu() - c}}
out["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print("RESULT " + json.dumps(out), flush=True)
del batches  # a live from_generator iterator can hang TF's teardown at interpreter exit
os._exit(0)
"""


def _gin_value(name: str) -> int:
  with open(os.path.join(ROOT, GIN)) as f:
    for line in f:
      if line.split("=")[0].strip() == name:
        return int(line.split("=")[1].split("#")[0])
  raise KeyError(f"{name} not set in {GIN}")


def _child(cmd: list[str], env: dict) -> dict:
  """Runs cmd; wall, CPU (user+sys) and peak RSS of the child from wait4."""
  t = time.time()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.time() - t
  code = os.waitstatus_to_exitcode(status)
  if code != 0:
    raise RuntimeError(f"{' '.join(cmd)} exited {code}:\n{out[-3000:]}")
  return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
          "max_rss_gb": round(usage.ru_maxrss / 2**20, 2), "output": out}


def _proc_cpu_s(pid: int) -> float:
  """user + sys CPU seconds of a live process (all its threads), from /proc."""
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_peak_rss_gb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    line = next(l for l in f if l.startswith("VmHWM:"))
  return int(line.split()[1]) / 2**20


def first_step(env: dict, out_dir: str, overrides: Sequence[str] = (),
               timeout_s: float = 1800) -> dict:
  """Runs run.py until its progress bar reports step 1; wall, CPU and peak RSS then.

  overrides: extra `--gin.NAME=VALUE` arguments of the command.
  """
  cmd = [sys.executable, "run.py", f"--gin_file={GIN}", "--gin.run.stage='multitask'",
         f"--gin.run.output_dir='{out_dir}'", "--gin.train_multitask.steps=100",
         "--gin.train_multitask.log_every=1", "--gin.train_multitask.checkpoint_every=100",
         "--gin.train_multitask.show_progress=True", *overrides]
  t = time.time()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  seen, done = b"", re.compile(rb"\|\s*1/100 \[")
  started, setup = re.compile(rb"\|\s*0/100 \["), None
  try:
    while not done.search(seen[-4000:]):
      chunk = os.read(proc.stdout.fileno(), 4096)
      if not chunk or time.time() - t > timeout_s:
        proc.wait(timeout=60)
        raise RuntimeError(f"{' '.join(cmd)} ended (or timed out) before step 1 "
                           f"(exit {proc.returncode}):\n{seen[-3000:].decode(errors='replace')}")
      seen += chunk
      if setup is None and started.search(seen[-4000:]):
        # The bar at 0/100: model, train state and input pipeline are built; step 1
        # (its batch, its compile, its run) is next.
        setup = {"wall_s": round(time.time() - t, 1), "cpu_s": round(_proc_cpu_s(proc.pid), 1),
                 "max_rss_gb": round(_proc_peak_rss_gb(proc.pid), 2)}
    wall, cpu, rss = time.time() - t, _proc_cpu_s(proc.pid), _proc_peak_rss_gb(proc.pid)
  finally:
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
    proc.wait()
  return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "max_rss_gb": round(rss, 2),
          "until_training_starts": setup,
          "load_avg_1min": os.getloadavg()[0], "command": " ".join(cmd[1:])}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cache_dir", default=None, help="default $MHR_JAX_BIGBENCH_DIR")
  parser.add_argument("--skip_run", action="store_true", help="only the data measurement")
  parser.add_argument("--skip_data", action="store_true", help="only the run.py measurement")
  parser.add_argument("--out", default=RESULTS)
  args, overrides = parser.parse_known_args(argv)
  bad = [a for a in overrides if not a.startswith("--gin.")]
  if bad:
    parser.error(f"unrecognised argument(s) {bad}; gin overrides of the run.py command look "
                 "like --gin.NAME=VALUE")
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
             TF_CPP_MIN_LOG_LEVEL="2")
  if args.cache_dir:
    env["MHR_JAX_BIGBENCH_DIR"] = os.path.abspath(args.cache_dir)
  lengths = {"inputs": _gin_value("mhr_jax.DataConfig.input_length"),
             "targets": _gin_value("mhr_jax.DataConfig.target_length")}
  batch = _gin_value("mhr_jax.DataConfig.batch_size")
  result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            "load_avg_at_start": os.getloadavg()[0], "lengths": lengths, "batch": batch,
            "overrides": overrides}
  if not args.skip_data:
    code = _DATA_CHILD.format(root=ROOT, lengths=lengths, batch=batch)
    data = _child([sys.executable, "-c", code], env)
    line = [l for l in data.pop("output").splitlines() if l.startswith("RESULT ")][-1]
    result["data"] = {**data, **json.loads(line[len("RESULT "):])}
    print("data:", json.dumps(result["data"], indent=1))
  if not args.skip_run:
    with tempfile.TemporaryDirectory() as tmp:
      env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tmp, "jax_cache")  # empty: a first run
      for name in ("cold", "warm"):
        result[f"first_step_{name}"] = first_step(env, os.path.join(tmp, name), overrides)
        print(f"first step ({name}):", json.dumps(result[f"first_step_{name}"], indent=1))
  result["load_avg_at_end"] = os.getloadavg()[0]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
