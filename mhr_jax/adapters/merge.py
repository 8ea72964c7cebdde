"""Fold one task's adapter into the base kernels: a plain T5 for zero-overhead inference.

  LoRA:       W' = W + A B · scaling
  Poly/MHR:   W' = W + A_t B_t · scaling  (A_t, B_t mixed with task t's
              evaluation routing weights, see poly.py)
  (IA)^3:     W' = W diag(l) (output targets: columns scaled)
              W' = diag(l) W (feedforward targets: rows scaled)

Kernels are [in, out] (with a leading layer axis under `scan_layers`); the
update is computed in float32 and cast back to the kernel's dtype. The
result has no adapter or router parameters: `T5(config)` (adapter=None)
takes it.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from mhr_jax import param_tree
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.adapters.poly import mix_skills
from mhr_jax.adapters.routing import routing_weights, validate_task_ids


def merge_adapters(params: Any, config: AdapterConfig, task_id: int = 0) -> dict:
  """Returns `params` with every adapter folded into its kernel (task `task_id` for Poly/MHR)."""
  flat = param_tree.flatten(params)
  if config.routed:
    validate_task_ids([task_id], config.n_tasks)
  # Adapter parameters disappear into the kernels.
  out = {k: v for k, v in flat.items() if not param_tree.is_adapter_path(k)}
  for projection in param_tree.adapted_projections(flat):
    kernel = f"{projection}/kernel"
    out[kernel] = _merged_kernel(flat, projection, flat[kernel], config, task_id)
  return param_tree.unflatten(out)


def _merged_kernel(flat, projection: str, kernel, config: AdapterConfig, task_id: int):
  ad = param_tree.adapter_prefix(projection)
  w = jnp.asarray(kernel, jnp.float32)
  if config.kind == "ia3":
    scale = jnp.asarray(flat[ad + "ia3_scale"], jnp.float32)
    if config.is_ia3_feedforward(projection):
      w = w * scale[..., :, None]
    else:
      w = w * scale[..., None, :]
  else:
    if config.kind == "lora":
      a, b = flat[ad + "lora_a"], flat[ad + "lora_b"]
    else:
      z = param_tree.routing_logits_of(flat, projection)
      weights = routing_weights(jnp.take(jnp.asarray(z), task_id, axis=-3), deterministic=True,
                                straight_through=config.straight_through)
      a, b = mix_skills(weights, jnp.asarray(flat[ad + "skill_lora_a"], jnp.float32),
                        jnp.asarray(flat[ad + "skill_lora_b"], jnp.float32))
    w = w + jnp.matmul(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)) * config.scale
  return w.astype(jnp.asarray(kernel).dtype)
