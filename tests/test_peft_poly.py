"""Our routed T5 against PEFT's Poly/MHR (`PolyModel`) on transformers' T5.

Same base weights, same adapter weights (B random, routing logits far from
uniform), a batch mixing task ids: logits must agree to 1e-4. Then PEFT-saved
adapters import, and our exported adapters load in PEFT.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

from mhr_jax.adapters import peft_io
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.checkpoints.hf import hf_state_dict_to_params
from mhr_jax.models import T5, T5Config
from tests.hf_reference import numpy_state_dict, tiny_hf_t5

TOL = 1e-4
ENC = np.array([[5, 9, 13, 2, 1, 0, 0], [7, 3, 3, 8, 11, 4, 1], [20, 1, 0, 0, 0, 0, 0],
                [6, 6, 17, 30, 2, 1, 0]], np.int32)
DEC = np.array([[0, 4, 9, 2], [0, 8, 8, 1], [0, 3, 0, 0], [0, 12, 5, 7]], np.int32)
TASK_IDS = np.array([2, 0, 1, 2], np.int32)
N_TASKS, N_SKILLS, RANK = 3, 3, 2


def hf_base(family, seed=0, num_decoder_layers=None, scan_layers=False):
  hf = tiny_hf_t5(family, num_layers=2, num_decoder_layers=num_decoder_layers, seed=seed)
  config = T5Config.from_hf_dict(hf.config.to_dict(), tie_word_embeddings=family == "v1.0",
                                 dropout_rate=0.0, scan_layers=scan_layers)
  return hf, config, hf_state_dict_to_params(numpy_state_dict(hf), config)


def randomize_peft_poly(peft_model, seed):
  """B ~ N(0, 1) (PEFT inits it to 0) and routing logits ~ N(0, 2^2)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if "poly_lora_B" in name:
        p.copy_(torch.randn(p.shape, generator=gen))
      elif "module_logits" in name:
        p.copy_(2.0 * torch.randn(p.shape, generator=gen))


def peft_logits(peft_model, task_ids=TASK_IDS):
  enc = torch.as_tensor(ENC, dtype=torch.long)
  with torch.no_grad():
    out = peft_model(input_ids=enc, attention_mask=(enc != 0).long(),
                     decoder_input_ids=torch.as_tensor(DEC, dtype=torch.long),
                     task_ids=torch.as_tensor(task_ids, dtype=torch.long), use_cache=False)
  return out.logits.numpy()


def our_logits(config, adapter, params, task_ids=TASK_IDS, single_task=False):
  return np.asarray(T5(config, adapter=adapter).apply(
      {"params": params}, ENC, DEC, task_ids=jnp.asarray(task_ids), deterministic=True,
      single_task=single_task))


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


def random_params(config, adapter, base_params=None, seed=0):
  """Parameters of `T5(config, adapter)`: `base_params` where given, else N(0, σ²) draws.

  Adapter parameters are all random (B and Z too, unlike their init); the
  model is never initialised for real (eval_shape only: fast).
  """
  shapes = jax.eval_shape(lambda: T5(config, adapter=adapter).init(
      {"params": jax.random.PRNGKey(0), "routing": jax.random.PRNGKey(0)}, ENC[:1], DEC[:1],
      task_ids=jnp.zeros((1,), jnp.int32))["params"])
  flat = flax.traverse_util.flatten_dict(flax.core.meta.unbox(shapes), sep="/")
  base = flax.traverse_util.flatten_dict(base_params or {}, sep="/")
  rng = np.random.default_rng(seed)
  std = {"skill_lora_a": 0.3, "skill_lora_b": 1.0, "routing_logits": 2.0, "lora_a": 0.3,
         "lora_b": 1.0, "scale": 0.1, "embedding": 1.0, "rel_embedding": 0.5}
  for k, v in flat.items():
    leaf = k.rsplit("/", 1)[-1]
    if k in base:
      flat[k] = base[k]
    elif leaf in ("scale", "ia3_scale"):
      flat[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    else:  # kernels ~ N(0, 1/fan_in)
      sd = std.get(leaf, v.shape[-2] ** -0.5 if len(v.shape) >= 2 else 1.0)
      flat[k] = rng.normal(0.0, sd, v.shape).astype(np.float32)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


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


def tiny_config(**overrides) -> T5Config:
  """Our T5Config with `tiny_hf_t5`'s sizes (v1.0), so compiled ops are shared across tests."""
  kwargs = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16,
                dropout_rate=0.0)
  kwargs.update(overrides)
  return T5Config(**kwargs)
