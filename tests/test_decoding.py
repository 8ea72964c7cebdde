"""Greedy decoding with the KV cache == HF `generate()` == our cache-free decoder.

The reference models are chosen so the comparison means something: rows
run several tokens, produce varied tokens, and some (not all) rows stop at
EOS mid-sequence (so padding after EOS and rows going on after others
stopped are both exercised). These properties are asserted on the HF
output itself.
"""

import flax
import jax
import numpy as np
import pytest

from mhr_jax.checkpoints.hf import hf_state_dict_to_params
from mhr_jax.models import T5, T5Config
from mhr_jax.models.decoding import greedy_decode, greedy_decode_no_cache
from tests import hf_reference
from tests.utils import padded_encoder_inputs

MAX_LEN = 10
# name: (tiny_hf_t5 kwargs, our config overrides)
CASES = {
    # Decoder deeper than the encoder: HF generates without its KV cache.
    "v1.0": (dict(family="v1.0", num_layers=2, num_decoder_layers=3, seed=2,
                  embedding_std=0.1, eos_logit_scale=3.0), {}),
    # Equal depths: HF uses its KV cache; ours runs the scanned layers' cache.
    "v1.1-scan": (dict(family="v1.1", num_layers=2, num_decoder_layers=2, seed=3,
                       eos_logit_scale=2.0), dict(scan_layers=True)),
}


def _eos_positions(tokens):
  return [list(row).index(1) if 1 in row else None for row in tokens]


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
  hf_kwargs, overrides = CASES[request.param]
  hf_model = hf_reference.tiny_hf_t5(**hf_kwargs)
  enc = padded_encoder_inputs()
  v11 = hf_kwargs["family"] == "v1.1"
  config = T5Config.from_hf_dict(hf_model.config.to_dict(), tie_word_embeddings=not v11,
                                 **overrides)
  model = T5(config)
  decode = jax.jit(lambda p, e: greedy_decode(model, p, e, MAX_LEN))
  return dict(
      name=request.param, enc=enc, model=model, decode=decode,
      expected=hf_reference.hf_greedy_generate(hf_model, enc, MAX_LEN),
      params=hf_state_dict_to_params(hf_reference.numpy_state_dict(hf_model), config))


def test_reference_output_is_a_meaningful_target(case):
  expected = case["expected"]
  eos_at = _eos_positions(expected)
  assert any(p is not None and p < MAX_LEN - 1 for p in eos_at), expected  # padding after EOS
  assert any(p is None or p >= 4 for p in eos_at), expected  # a long row
  assert max(len(set(row[:p])) for row, p in zip(expected, eos_at)) >= 3, expected  # varied


def test_cached_greedy_decode_matches_hf_generate(case):
  tokens = case["decode"](case["params"], case["enc"])
  assert tokens.shape == (case["enc"].shape[0], MAX_LEN) and tokens.dtype == np.int32
  np.testing.assert_array_equal(np.asarray(tokens), case["expected"])


def test_no_cache_greedy_decode_matches_hf_generate(case):
  model = case["model"]
  tokens = jax.jit(lambda p, e: greedy_decode_no_cache(model, p, e, MAX_LEN))(
      case["params"], case["enc"])
  np.testing.assert_array_equal(np.asarray(tokens), case["expected"])


def test_batch_that_all_finishes_exits_early_with_same_tokens(case):
  expected = case["expected"]
  finished = np.array([p is not None for p in _eos_positions(expected)])
  assert finished.any() and not finished.all()
  # Same shape as before (reuses the compiled decoder), every row finishing.
  rows = np.flatnonzero(finished)[np.arange(len(finished)) % finished.sum()]
  tokens = case["decode"](case["params"], case["enc"][rows])
  np.testing.assert_array_equal(np.asarray(tokens), expected[rows])


def test_routed_adapter_model_decodes_with_the_cache():
  """task_ids reach the adapters on every step: cached == cache-free, and routing matters."""
  from mhr_jax.adapters.config import AdapterConfig
  hf_kwargs, _ = CASES["v1.0"]
  hf_model = hf_reference.tiny_hf_t5(**hf_kwargs)
  config = T5Config.from_hf_dict(hf_model.config.to_dict(), tie_word_embeddings=True)
  base = hf_state_dict_to_params(hf_reference.numpy_state_dict(hf_model), config)
  adapter = AdapterConfig(kind="poly", rank=2, n_tasks=2, n_skills=3, n_heads=2,
                          target_modules="qv")
  model = T5(config, adapter=adapter)
  enc = padded_encoder_inputs()
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), enc, enc[:, :4])["params"]
  shapes = flax.linen.meta.unbox(shapes)
  # Base weights from the checkpoint; every adapter parameter random (LoRA B is
  # zero at init, which would make the adapters invisible).
  rng = np.random.default_rng(0)
  flat_base = flax.traverse_util.flatten_dict(base)
  params = flax.traverse_util.unflatten_dict({
      path: flat_base[path] if path in flat_base
      else rng.normal(0.0, 0.5, s.shape).astype(s.dtype)
      for path, s in flax.traverse_util.flatten_dict(shapes).items()})
  assert len(flax.traverse_util.flatten_dict(params)) > len(flat_base)
  task_ids = np.arange(enc.shape[0], dtype=np.int32) % 2
  cached = np.asarray(jax.jit(lambda p, e, t: greedy_decode(model, p, e, MAX_LEN, t))(
      params, enc, task_ids))
  no_cache = np.asarray(jax.jit(lambda p, e, t: greedy_decode_no_cache(model, p, e, MAX_LEN, t))(
      params, enc, task_ids))
  np.testing.assert_array_equal(cached, no_cache)
  # The adapters change the output (the plain model decodes like HF, tested above).
  assert (cached != hf_reference.hf_greedy_generate(hf_model, enc, MAX_LEN)).any()
