"""Our LoRA and (IA)^3 adapters against PEFT's on transformers' T5 (same weights, 1e-4)."""

from __future__ import annotations

import flax
import numpy as np
import peft
import torch

from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.adapters.peft_io import our_module_path
from tests.hf_reference import hf_base, peft_logits
from tests.utils import TOL, our_logits


def _with_peft_adapter(base_params, peft_model, leaf: str, ours: str, convert) -> dict:
  """Copies PEFT's `<module>.<leaf>.default[.weight]` tensors to `<path>/adapter/<ours>`."""
  flat = flax.traverse_util.flatten_dict(base_params, sep="/")
  n = 0
  for name, p in peft_model.named_parameters():
    if f".{leaf}.default" not in name:
      continue
    module = name.split(f".{leaf}.default")[0].removeprefix("base_model.model.")
    stack, layer, block, proj = our_module_path(module)
    flat[f"{stack}/layers_{layer}/{block}/{proj}/adapter/{ours}"] = convert(
        p.detach().numpy().copy())
    n += 1
  assert n > 0
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def test_lora_matches_peft_lora():
  hf, config, base_params = hf_base("v1.0", seed=2)
  scaling = 0.75
  peft_model = peft.get_peft_model(hf, peft.LoraConfig(
      task_type="SEQ_2_SEQ_LM", r=2, lora_alpha=2 * scaling, lora_dropout=0.0,
      target_modules=["q", "v", "wo"])).eval()
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if "lora_B" in name:  # PEFT starts B at 0
        p.copy_(torch.randn(p.shape, generator=gen))
  params = _with_peft_adapter(base_params, peft_model, "lora_A", "lora_a", lambda w: w.T)
  params = _with_peft_adapter(params, peft_model, "lora_B", "lora_b", lambda w: w.T)
  adapter = AdapterConfig(kind="lora", rank=2, scaling=scaling,
                          target_modules=r".*/(query|value)|.*/mlp/wo")
  expected = peft_logits(peft_model)
  with peft_model.disable_adapter():
    assert np.abs(expected - peft_logits(peft_model)).max() > 1e-2
  np.testing.assert_allclose(our_logits(config, adapter, params), expected, atol=TOL, rtol=0)


def test_ia3_matches_peft_ia3():
  hf, config, base_params = hf_base("v1.0", seed=3)
  peft_model = peft.get_peft_model(hf, peft.IA3Config(
      task_type="SEQ_2_SEQ_LM", target_modules=["k", "v", "wo"],
      feedforward_modules=["wo"])).eval()
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if "ia3_l" in name:  # PEFT starts at 1
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
  # PEFT's vectors are [out, 1] (output targets) or [1, in] (feedforward).
  params = _with_peft_adapter(base_params, peft_model, "ia3_l", "ia3_scale", np.ravel)
  adapter = AdapterConfig(kind="ia3", target_modules="ia3")
  expected = peft_logits(peft_model)
  with peft_model.disable_adapter():
    assert np.abs(expected - peft_logits(peft_model)).max() > 1e-2
  np.testing.assert_allclose(our_logits(config, adapter, params), expected, atol=TOL, rtol=0)
