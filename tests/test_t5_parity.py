"""Our Flax T5 against transformers' PyTorch T5ForConditionalGeneration (CPU, fp32, eval).

Weights come from `tests/hf_reference.py` (re-drawn, O(1) attention logits,
random norm scales), mapped by `mhr_jax.checkpoints.hf`. Inputs exercise
encoder padding, encoder length > relative_attention_max_distance (bucket
clipping), decoder length > the exact-bucket range, and a decoder depth
different from the encoder's. Max abs diffs are printed (`pytest -s`) and
recorded as test properties.
"""

import jax
import numpy as np
import pytest

from mhr_jax.checkpoints.hf import hf_state_dict_to_params
from mhr_jax.models import T5, T5Config
from tests import hf_reference

FP32_TOL = 1e-4
# (family, encoder layers, decoder layers)
CASES = {"v1.0": ("v1.0", 2, 3), "v1.1": ("v1.1", 3, 2)}


def _inputs():
  rng = np.random.default_rng(123)
  enc = rng.integers(2, 96, (3, 20)).astype(np.int32)  # 20 > max_distance 16
  enc[0, 13:] = 0   # padded rows
  enc[1, 5:] = 0
  enc[np.arange(3), [12, 4, 19]] = 1  # EOS before the padding
  dec = rng.integers(1, 96, (3, 12)).astype(np.int32)
  dec[:, 0] = 0  # decoder start token
  return enc, dec


def _config(hf_model, **overrides) -> T5Config:
  v11 = hf_model.config.feed_forward_proj == "gated-gelu"
  return T5Config.from_hf_dict(hf_model.config.to_dict(), tie_word_embeddings=not v11,
                               **overrides)


_CASE_CACHE = {}


def _case(name):
  """The HF model of a case, its tensors, inputs and reference outputs (built once)."""
  if name not in _CASE_CACHE:
    family, layers, dec_layers = CASES[name]
    hf_model = hf_reference.tiny_hf_t5(family, layers, dec_layers, seed=7)
    enc, dec = _inputs()
    _CASE_CACHE[name] = dict(
        family=family, hf=hf_model, state=hf_reference.numpy_state_dict(hf_model), enc=enc,
        dec=dec, ref_logits=hf_reference.hf_logits(hf_model, enc, dec),
        ref_encoded=hf_reference.hf_encoder_outputs(hf_model, enc), compiled={})
  return _CASE_CACHE[name]


@pytest.fixture(params=sorted(CASES))
def case(request):
  return _case(request.param)


def _ours(case, state=None, **overrides):
  """(config, encoded [b, i, e], logits [b, t, v]) of our T5 on the case's inputs."""
  config = _config(case["hf"], **overrides)
  params = hf_state_dict_to_params(case["state"] if state is None else state, config)
  key = tuple(sorted(overrides.items()))
  if key not in case["compiled"]:  # one compilation per config (XLA time dominates)
    model = T5(config)

    @jax.jit
    def run(params, enc, dec):
      encoded = model.apply({"params": params}, enc, method=model.encode)
      return encoded, model.apply({"params": params}, enc, dec)

    case["compiled"][key] = run
  encoded, logits = case["compiled"][key](params, case["enc"], case["dec"])
  return config, np.asarray(encoded, np.float32), np.asarray(logits)


def _report(record_property, name, value):
  record_property(name, float(value))
  print(f"\n{name}: {value:.3g}")


def test_reference_config_is_the_intended_family(case):
  config = _config(case["hf"])
  if case["family"] == "v1.0":
    assert (config.feed_forward_proj, config.tie_word_embeddings, config.scale_decoder_outputs) \
        == ("relu", True, True)
    assert case["hf"].lm_head.weight is case["hf"].shared.weight
  else:
    assert (config.feed_forward_proj, config.tie_word_embeddings, config.scale_decoder_outputs) \
        == ("gated-gelu", False, False)
    assert case["hf"].lm_head.weight is not case["hf"].shared.weight
  assert config.num_decoder_layers != config.num_layers


def test_encoder_and_logits_match_hf_fp32(case, record_property):
  _, encoded, logits = _ours(case)
  assert logits.dtype == np.float32
  enc_diff = np.abs(encoded - case["ref_encoded"]).max()
  logit_diff = np.abs(np.asarray(logits) - case["ref_logits"]).max()
  _report(record_property, f"{case['family']} encoder max abs diff", enc_diff)
  _report(record_property, f"{case['family']} logits max abs diff", logit_diff)
  assert np.abs(case["ref_logits"]).max() > 3.0  # the comparison is not near zero
  assert enc_diff < FP32_TOL
  assert logit_diff < FP32_TOL


# scan/remat and bf16 each on one family: XLA compile time is the test budget, and
# the scanned tree layout of both families is pinned in test_hf_checkpoint.py.
def test_scan_layers_with_remat_matches_hf(record_property):
  case = _case("v1.0")
  config, encoded, logits = _ours(case, scan_layers=True, remat=True)
  assert config.scan_layers and config.remat
  diff = np.abs(np.asarray(logits) - case["ref_logits"]).max()
  _report(record_property, f"{case['family']} scan+remat logits max abs diff", diff)
  assert np.abs(encoded - case["ref_encoded"]).max() < FP32_TOL
  assert diff < FP32_TOL


def test_bfloat16_activations_are_close(record_property):
  case = _case("v1.1")
  _, _, logits = _ours(case, dtype="bfloat16")
  assert logits.dtype == np.float32
  ref = case["ref_logits"]
  diff = np.abs(np.asarray(logits) - ref).max()
  _report(record_property, f"{case['family']} bf16 logits max abs diff (max |logit| "
          f"{np.abs(ref).max():.1f})", diff)
  # For scale: transformers itself in bfloat16 (weights too) is off by 0.40 on this
  # model; ours (fp32 weights, bf16 activations) by 0.14 jitted, 0.21 op by op.
  assert diff < 0.1 * np.abs(ref).max()
  # Same argmax on (nearly) every position.
  assert (np.asarray(logits).argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_comparison_detects_a_wrong_relative_position_mapping(case):
  """A test that cannot fail is worse than none: permuting heads of a position table breaks it."""
  state = dict(case["state"])
  name = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
  state[name] = np.roll(state[name], 1, axis=1)
  _, _, logits = _ours(case, state=state)
  assert np.abs(logits - case["ref_logits"]).max() > 1e-2
