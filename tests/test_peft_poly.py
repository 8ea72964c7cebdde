"""Our routed T5 against PEFT's Poly/MHR (`PolyModel`) on transformers' T5.

Same base weights, same adapter weights (B random, routing logits far from
uniform), a batch mixing task ids: logits must agree to 1e-4. Then PEFT-saved
adapters import, and our exported adapters load in PEFT.
"""

from __future__ import annotations

import flax
import jax
import numpy as np
import peft
import pytest
import torch

from mhr_jax.adapters import peft_io
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.models import T5
from tests.hf_reference import hf_base, peft_logits
from tests.utils import DEC, ENC, TASK_IDS, TOL, our_logits, random_params

N_TASKS, N_SKILLS, RANK = 3, 3, 2


def randomize_peft_poly(peft_model, seed):
  """B ~ N(0, 1) (PEFT inits it to 0) and routing logits ~ N(0, 2^2)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if "poly_lora_B" in name:
        p.copy_(torch.randn(p.shape, generator=gen))
      elif "module_logits" in name:
        p.copy_(2.0 * torch.randn(p.shape, generator=gen))


CASES = [  # family, n_splits, PEFT target_modules, decoder layers, scanned
    ("v1.0", 1, ["q", "v"], None, False),
    ("v1.0", 2, ["q", "k", "v", "o"], 3, False),
    ("v1.0", 4, ["wi", "wo"], None, False),
    ("v1.1", 2, ["wi_0", "wi_1", "wo", "q"], None, False),
    ("v1.1", 4, ["k", "o"], None, False),
]
# Scanned layers are covered by the export test (PEFT -> ours -> PEFT).


@pytest.mark.parametrize("family,n_splits,targets,dec_layers,scan", CASES)
def test_routed_t5_matches_peft_poly(tmp_path, family, n_splits, targets, dec_layers, scan):
  hf, config, base_params = hf_base(family, num_decoder_layers=dec_layers, scan_layers=scan)
  peft_model = peft.get_peft_model(hf, peft.PolyConfig(
      task_type="SEQ_2_SEQ_LM", r=RANK, n_tasks=N_TASKS, n_skills=N_SKILLS, n_splits=n_splits,
      target_modules=targets)).eval()
  randomize_peft_poly(peft_model, seed=n_splits)
  expected = peft_logits(peft_model)
  peft_model.save_pretrained(str(tmp_path))

  adapter, params = peft_io.load_peft_poly(str(tmp_path), base_params)
  assert (adapter.n_heads, adapter.n_skills, adapter.n_tasks, adapter.rank) == (
      n_splits, N_SKILLS, N_TASKS, RANK)
  got = our_logits(config, adapter, params)
  with peft_model.disable_adapter():
    assert np.abs(expected - peft_logits(peft_model)).max() > 1e-2  # the adapters matter
  np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
  if n_splits == 2 and family == "v1.0":  # the single-task fast path agrees with PEFT too
    same = np.full_like(TASK_IDS, 1)
    np.testing.assert_allclose(our_logits(config, adapter, params, same, single_task=True),
                               peft_logits(peft_model, same), atol=TOL, rtol=0)


@pytest.mark.parametrize("shared,scan,scaling", [(False, False, None), (True, True, 0.3)])
def test_exported_adapter_loads_in_peft(tmp_path, shared, scan, scaling):
  hf, config, base_params = hf_base("v1.0", seed=1, scan_layers=scan)
  adapter = AdapterConfig(kind="poly", rank=RANK, n_tasks=N_TASKS, n_skills=N_SKILLS,
                          n_heads=2, target_modules="all_linear", shared_routing=shared,
                          scaling=scaling)
  params = random_params(config, adapter, base_params, seed=3)
  ours = our_logits(config, adapter, params)
  peft_io.save_peft_poly(params, adapter, str(tmp_path))
  loaded = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
  n_poly = sum(isinstance(m, peft.tuners.poly.layer.Linear) for m in loaded.modules())
  assert n_poly == 2 * 6 + 2 * 10  # per layer: enc q,k,v,o,wi,wo; dec + cross q,k,v,o
  np.testing.assert_allclose(peft_logits(loaded), ours, atol=TOL, rtol=0)

  # And back: importing what we exported gives the same model.
  _, config_unrolled, unrolled_base = hf_base("v1.0", seed=1)
  adapter2, params2 = peft_io.load_peft_poly(str(tmp_path), unrolled_base)
  np.testing.assert_allclose(our_logits(config_unrolled, adapter2, params2), ours,
                             atol=TOL, rtol=0)
  if scan:  # importing into a scanned backbone stacks the layers in order
    adapter3, params3 = peft_io.load_peft_poly(str(tmp_path), base_params)
    shapes = jax.eval_shape(lambda: T5(config, adapter=adapter3).init(
        {"params": jax.random.PRNGKey(0)}, ENC[:1], DEC[:1])["params"])
    assert (jax.tree.structure(flax.core.meta.unbox(shapes))
            == jax.tree.structure(params3))
    flat2 = flax.traverse_util.flatten_dict(params2, sep="/")
    for path, x in flax.traverse_util.flatten_dict(params3, sep="/").items():
      if "/adapter/" in path:
        for i in range(config.num_layers):
          np.testing.assert_array_equal(x[i], flat2[path.replace("/layers/", f"/layers_{i}/")])


def test_module_names_round_trip():
  for stack, block, proj, hf in [
      ("encoder", "attention", "query", "encoder.block.3.layer.0.SelfAttention.q"),
      ("encoder", "mlp", "wo", "encoder.block.3.layer.1.DenseReluDense.wo"),
      ("decoder", "self_attention", "out", "decoder.block.3.layer.0.SelfAttention.o"),
      ("decoder", "encoder_decoder_attention", "value", "decoder.block.3.layer.1.EncDecAttention.v"),
      ("decoder", "mlp", "wi_1", "decoder.block.3.layer.2.DenseReluDense.wi_1")]:
    assert peft_io.hf_module_name(stack, 3, block, proj) == hf
    assert peft_io.our_module_path(hf) == (stack, 3, block, proj)
  with pytest.raises(ValueError, match="not a T5 projection"):
    peft_io.our_module_path("encoder.block.0.layer.0.SelfAttention.relative_attention_bias")


def test_import_rejects_other_peft_types(tmp_path):
  (tmp_path / peft_io.CONFIG_NAME).write_text('{"peft_type": "LORA"}')
  with pytest.raises(ValueError, match="'LORA'.*only peft_type 'POLY'"):
    peft_io.load_peft_poly(str(tmp_path))
