"""Polytropon (Poly) and Multi-Head Routing (MHR): routed mixtures of LoRA skills.

Notation (Ponti et al. 2023; Caccia et al. 2023):
  Φ = {(A_s, B_s)}_{s=1..|Φ|}  the skill inventory of one projection [in, out];
  h heads: the input is cut into h blocks of d = in/h, the output into h
  blocks of e = out/h, and each head has its own skills and routing:
    A_{h,s} ∈ R^{d x r}  (`skill_lora_a`  [h, |Φ|, in/h, r])
    B_{h,s} ∈ R^{r x e}  (`skill_lora_b`  [h, |Φ|, r, out/h])
  w_{t,h,s}  routing weights of task t (see routing.py).
  Task t's adapter:
    A_t = [Σ_s w_{t,1,s} A_{1,s}; ...; Σ_s w_{t,h,s} A_{h,s}]   stacked on `in`  -> [in, r]
    B_t = [Σ_s w_{t,1,s} B_{1,s}, ..., Σ_s w_{t,h,s} B_{h,s}]   joined on `out`  -> [r, out]
    y' = y + (x A_t) B_t · scaling     (scaling = 1/r by default, as PEFT)
  Poly is h = 1. The shapes, the init of each A_{h,s} (kaiming-uniform, a=√5,
  fan-in d), B = 0, and the order of the reshapes are PEFT's `poly` tuner's,
  so PEFT checkpoints copy over without reshaping.

Mixed-task batches mix one (A_t, B_t) per example; with
`AdapterInputs.single_task` every example uses task_ids[0], so the skills are
mixed once and one plain LoRA is applied to the whole batch. (In training
the single-task path draws one routing sample for the batch, the mixed path
one per example; evaluation is identical.)
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mhr_jax.adapters.inputs import AdapterInputs, ProjectionAdapter
from mhr_jax.adapters.lora import input_dropout, kaiming_uniform_init, lora_delta
from mhr_jax.adapters.routing import router_from_config
from mhr_jax.param_tree import Role, declare_roles


def mix_skills(weights: jax.Array, skill_a: jax.Array, skill_b: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  """Mixes skills into one LoRA per weight row.

  weights [..., h, s], skill_a [..., h, s, d, r], skill_b [..., h, s, r, e]
  (leading dims broadcast) -> A [..., h*d, r], B [..., r, h*e].
  """
  a = jnp.einsum("...hs,...hsdr->...hdr", weights, skill_a)
  b = jnp.einsum("...hs,...hsre->...hre", weights, skill_b)
  h, d, r = a.shape[-3:]
  e = b.shape[-1]
  a = a.reshape(a.shape[:-3] + (h * d, r))
  b = jnp.swapaxes(b, -3, -2)  # [..., r, h, e]
  b = b.reshape(b.shape[:-3] + (r, h * e))
  return a, b


@declare_roles(skill_lora_a=Role.SKILLS, skill_lora_b=Role.SKILLS)
class PolyAdapter(ProjectionAdapter):
  """A skill inventory on a projection [in, out]; called as layer(x, y, inputs) -> y'."""

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array, inputs: Optional[AdapterInputs],
               kernel: Optional[jax.Array] = None) -> jax.Array:
    """x [b, l, in], y = x @ kernel [b, l, out] -> y + (x A_t) B_t · scaling."""
    del kernel
    cfg = self.config
    h, s, r = cfg.n_heads, cfg.n_skills, cfg.rank
    for name, width in (("in_features", self.in_features), ("out_features", self.out_features)):
      if width % h:
        raise ValueError(f"{'/'.join(self.path[:-1])}: {name}={width} is not divisible by "
                         f"n_heads={h}")
    d, e = self.in_features // h, self.out_features // h
    skill_a = self.param("skill_lora_a", nn.with_logical_partitioning(
        kaiming_uniform_init(d), ("routing_heads", "skills", self.kernel_axes[0], "lora_rank")),
                         (h, s, d, r), self.param_dtype)
    skill_b = self.param("skill_lora_b", nn.with_logical_partitioning(
        nn.initializers.zeros, ("routing_heads", "skills", "lora_rank", self.kernel_axes[1])),
                         (h, s, r, e), self.param_dtype)

    if inputs is None:
      raise ValueError("routed adapters need AdapterInputs (task ids)")
    task_ids = inputs.task_ids[:1] if inputs.single_task else inputs.task_ids
    if cfg.shared_routing:
      if inputs.routing_weights is None:
        raise ValueError("shared_routing=True but AdapterInputs.routing_weights is None: "
                         "the model's shared router must compute them")
      weights = inputs.routing_weights
    else:
      weights = router_from_config(cfg, name="router")(task_ids, deterministic=inputs.deterministic)
    weights = weights.astype(skill_a.dtype)

    x_in = input_dropout(x, cfg.dropout, inputs).astype(skill_a.dtype)
    if inputs.single_task:
      a, b = mix_skills(weights[0], skill_a, skill_b)  # [in, r], [r, out]
      delta = lora_delta(x_in, a, b, cfg.scale)
    else:
      a, b = mix_skills(weights, skill_a, skill_b)  # [b, in, r], [b, r, out]
      delta = jnp.einsum("bli,bir->blr", x_in, a)
      delta = jnp.einsum("blr,bro->blo", delta, b) * cfg.scale
    return y + delta.astype(y.dtype)
