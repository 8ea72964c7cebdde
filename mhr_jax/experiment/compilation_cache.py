"""JAX's persistent compilation cache for command-line runs.

XLA compilation dominates the time from `python run.py` to the first step on CPU
(a tiny MHR T5, 36 routed projections: ~27 CPU-s to compile the initialiser and
~35 CPU-s the train step; benchmarks/bigbench_setup.py). JAX can keep compiled
executables on disk, keyed by the program, the compiler flags and the versions, so a
rerun of the same configuration (a resume, the next seed, another stage of the same
model) loads them instead. `run.py` turns it on for its own process only (tests that
call `run.main` keep compiling) through `pipeline.run(compilation_cache=True)`,
which never turns it on for the `compile` stage, whose report measures compile
seconds.

gin: `enable_compilation_cache.directory = None` turns it off; JAX's own
`JAX_COMPILATION_CACHE_DIR`, when set, takes precedence.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import gin
import jax

log = logging.getLogger(__name__)

DEFAULT_DIR = os.path.join("~", ".cache", "mhr_jax", "jax_compilation_cache")


@gin.configurable
def enable_compilation_cache(directory: Optional[str] = DEFAULT_DIR,
                             min_compile_seconds: float = 1.0) -> Optional[str]:
  """Points JAX's persistent cache at `directory` (created); returns it, or None when off.

  Args:
    directory: where executables are kept; None: no cache.
    min_compile_seconds: only programs that took at least this long are stored.
  """
  if directory is None:
    return None
  directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser(directory)
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
  log.debug("compiled steps are cached in %s", directory)  # README says where; an error stays one line
  return directory
