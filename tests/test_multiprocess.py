"""Multi-host code paths on one machine: 2 CPU processes x 2 devices, `jax.distributed`.

Each process is a fresh python running this file as a script: it joins the
job through `partitioning.maybe_initialize_distributed` (gloo collectives),
builds a (data=4) and a (data=2, model=2) mesh over the 4 global devices,
feeds only *its own* rows of the global batch (`shard_batch` assembles the
global arrays), and checks that the loss and gradients of a routed MHR model
equal a single-device computation of the whole batch within 1e-5.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
N_PROCESSES, LOCAL_DEVICES = 2, 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def check_process(process_id: str, port: str) -> None:
  """Runs in each of the two processes."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  sys.path.insert(0, str(_REPO))
  from mhr_jax import partitioning  # pylint: disable=g-import-not-at-top
  pid = int(process_id)
  assert partitioning.maybe_initialize_distributed(f"localhost:{port}", N_PROCESSES, pid)
  assert jax.process_count() == N_PROCESSES and jax.device_count() == 4
  assert partitioning.process_shard_info() == (pid, N_PROCESSES)

  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mhr_jax.models import T5  # pylint: disable=g-import-not-at-top
  from tests.utils import loss_and_grad, mesh_adapter, mesh_batch, mesh_config  # pylint: disable=g-import-not-at-top

  cfg = mesh_config("v1_1")
  model = T5(cfg, adapter=mesh_adapter("poly"))
  host_batch = mesh_batch(vocab=cfg.vocab_size)  # the same 8 rows in every process
  example = jnp.asarray(host_batch["encoder_input_tokens"][:1])
  init_fn = lambda rng: model.init(rng, example, example, task_ids=jnp.zeros((1,), jnp.int32))
  grad_fn = loss_and_grad(model)

  # Reference: the whole batch on this process's first device.
  local = jax.local_devices()[0]
  with jax.default_device(local):
    ref_params = nn.unbox(jax.jit(init_fn)(jax.random.key(0)))["params"]
    noise = np.random.default_rng(1)  # move away from LoRA B = 0
    ref_params = jax.tree.map(
        lambda p: np.asarray(p) + 0.05 * noise.standard_normal(p.shape).astype(p.dtype),
        ref_params)
    ref_loss, ref_grads = jax.jit(grad_fn)(ref_params, host_batch)

  rows = len(host_batch["task_ids"]) // N_PROCESSES
  mine = {k: v[pid * rows:(pid + 1) * rows] for k, v in host_batch.items()}
  for data, model_size in ((4, 1), (2, 2)):
    partitioner = partitioning.Partitioner(partitioning.make_mesh(data=data, model=model_size))
    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    shardings = partitioner.param_shardings(abstract)["params"]
    params = partitioner.place(ref_params, shardings)
    batch = partitioner.shard_batch(mine)
    for name, x in batch.items():
      assert x.shape[0] == len(host_batch[name]), (name, x.shape)  # global arrays
      assert not x.is_fully_addressable
    step = partitioner.jit(grad_fn, in_shardings=(shardings, partitioner.batch_sharding()),
                           out_shardings=partitioner.replicated())
    loss, grads = step(params, batch)
    np.testing.assert_allclose(np.asarray(loss), np.asarray(ref_loss), rtol=1e-5, atol=1e-5)
    flat_ref = jax.tree_util.tree_flatten_with_path(ref_grads)[0]
    flat = jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref)
    for (path, g_ref), g in zip(flat_ref, flat):
      np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-5,
                                 err_msg=f"mesh {data}x{model_size} {jax.tree_util.keystr(path)}")
    assert any("routing_logits" in jax.tree_util.keystr(p) for p, _ in flat_ref)
  print(f"CHECK OK {pid}", flush=True)
  jax.distributed.shutdown()


@pytest.mark.heavy
def test_two_processes_match_one_device():
  # Imported here: the processes below run this file before jax.distributed starts.
  from tests.utils import FAST_COMPILE_XLA_FLAGS  # pylint: disable=g-import-not-at-top
  port = str(_free_port())
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={LOCAL_DEVICES} "
                       + FAST_COMPILE_XLA_FLAGS,
             PYTHONPATH=os.pathsep.join([str(_REPO), os.environ.get("PYTHONPATH", "")]))
  procs = [subprocess.Popen([sys.executable, __file__, str(i), port], env=env, cwd=_REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(N_PROCESSES)]
  outputs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=300)
      outputs.append((p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (rc, out, err) in enumerate(outputs):
    assert rc == 0 and f"CHECK OK {i}" in out, (
        f"process {i} failed (rc={rc}):\n{out[-2000:]}\n{err[-6000:]}")


if __name__ == "__main__":
  check_process(*sys.argv[1:])
