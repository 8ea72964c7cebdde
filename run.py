#!/usr/bin/env python3
"""mhr_jax entry point (t5x style).

  python run.py                                  # configs/default.gin: synthetic MHR pipeline
  python run.py --gin_file=configs/experiments/synthetic.gin \\
      --gin_file=configs/methods/mhr.gin --gin.run.stage=multitask
  python run.py --gin_file=configs/experiments/synthetic.gin \\
      --gin_file=configs/methods/poly.gin --gin.run.output_dir=/tmp/poly
  python run.py --list_tasks
  python run.py --gin_file=configs/experiments/t0_3b.gin --print_config   # and exit

Stages (--gin.run.stage=...): multitask (pre-train skills + routing on a
mixture), adapt (few-shot adaptation to each held-out task x seed from a
multi-task checkpoint), zero_shot (μ-average a Poly/MHR checkpoint into one
LoRA, train it briefly on the multi-task mixture, evaluate on the held-out
tasks), eval (restore a checkpoint and evaluate), pipeline (multitask ->
adapt methods -> zero-shot methods -> results table), compile (every jitted
step compiled ahead of time for a TPU topology, e.g.
--gin.MeshConfig.topology=v5e:2x4; no weights, no data).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)
from mhr_jax import platforms  # pylint: disable=g-import-not-at-top

platforms.configure()  # JAX_PLATFORMS=cpu on a host without an accelerator (libtpu's noise)

# Light modules only at the top: TensorFlow (under `tasks`) and jax load in main(),
# after --help and argument errors, and with TF's native start-up lines silenced.
from mhr_jax import errors, gin_cli  # noqa: E402
from mhr_jax.training import preemption  # noqa: E402

DEFAULT_GIN = os.path.join(_ROOT, "configs", "default.gin")
USAGE = __doc__


def main(argv: list[str], compilation_cache: bool = False) -> int:
  """Runs the command line `argv`; `compilation_cache`: keep compiled steps on disk
  (mhr_jax/experiment/compilation_cache.py; the command line turns it on)."""
  try:
    files, bindings, rest = gin_cli.split_gin_args(argv)
  except gin_cli.GinConfigError as e:
    print(f"run.py: error: {e}", file=sys.stderr)
    return 2
  if "-h" in rest or "--help" in rest:
    print(USAGE)
    return 0
  if "--list_tasks" in rest:
    import tasks  # pylint: disable=g-import-not-at-top
    print(tasks.list_tasks())
    return 0
  print_config = "--print_config" in rest
  rest = [a for a in rest if a != "--print_config"]
  if rest:
    print(f"run.py: unknown arguments {rest}; valid: --gin_file=F, --gin_search_path=D, "
          "--gin.NAME=VALUE, --print_config, --list_tasks, --help", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                      datefmt="%H:%M:%S")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  with _native_stderr_silenced():  # TensorFlow's C++ start-up lines (CUDA probes)
    import tasks  # pylint: disable=g-import-not-at-top,unused-import
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")  # TF only feeds data; the devices are JAX's
  # After TF, inside main (see the top); importing it registers the gin configurables.
  from mhr_jax.experiment import pipeline  # pylint: disable=g-import-not-at-top
  # Only the project's own errors are one line (exit 2); anything else is a bug
  # and keeps its traceback. SIGTERM/SIGINT: finish the step, save, exit 143/130.
  with preemption.handle_signals():
    try:
      gin_cli.parse(files or [DEFAULT_GIN], bindings,
                    search_paths=[os.path.join(_ROOT, "configs"), _ROOT])
      if print_config:  # the configuration after every file and override; nothing runs
        print(gin_cli.config_text())
        return 0
      pipeline.run(compilation_cache=compilation_cache)
    except errors.MhrJaxError as e:
      print(f"run.py: error: {errors.one_line(e)}", file=sys.stderr)
      return e.exit_code
    except preemption.Preempted as e:
      print(f"run.py: {e}", file=sys.stderr)
      return e.exit_code
  return 0


@contextlib.contextmanager
def _native_stderr_silenced():
  """Sends file descriptor 2 to /dev/null (C++ libraries write there directly)."""
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:], compilation_cache=True))
