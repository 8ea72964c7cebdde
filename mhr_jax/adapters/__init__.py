"""Adapters on T5's projections: LoRA, Polytropon / Multi-Head Routing, (IA)^3.

  config.py    AdapterConfig: kind, rank, skills, heads, targets
  dense.py     AdaptedDense: a kernel plus the adapter its path selects
  inputs.py    AdapterInputs: task ids / routing weights of the batch
  routing.py   routing logits Z, relaxed-Bernoulli sampling, task-id checks
  lora.py      LoRA;  poly.py  Poly / MHR;  ia3.py  (IA)^3
  layers.py    build_adapter / build_shared_router (dispatch on kind)
  methods.py   the method table (typed rows): roles trained per stage, adaptation params, μ
  merge.py     fold one task's adapter into the kernels
  peft_io.py   PEFT Poly adapter import / export

Each module declares the roles of the parameters it creates
(`mhr_jax.param_tree.declare_roles`); everything else asks `param_tree.role_of`.

Import the submodule you need; this package imports nothing itself.
"""
