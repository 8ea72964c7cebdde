"""Beam search == transformers' `generate(num_beams=n, length_penalty=a, early_stopping=False)`.

Token for token on random checkpoints (tests/hf_reference.py) whose logits
are flat enough that the beams disagree with greedy decoding and with each
other across length penalties, and EOS is likely mid-sequence, so rows
finish at different lengths; these properties are asserted on HF's own
output. One model runs scanned layers (the cache reorder moves axis 1), the
other unrolled with a decoder deeper than its encoder (HF without cache).
"""

import flax
import jax
import numpy as np
import pytest

from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.checkpoints.hf import hf_state_dict_to_params
from mhr_jax.models import T5, T5Config
from mhr_jax.models.decoding import beam_search
from tests import hf_reference
from tests.utils import padded_encoder_inputs

MAX_LEN = 10
PENALTIES = (0.6, 1.0, 2.0)
# name: (tiny_hf_t5 kwargs, our config overrides, beam counts)
CASES = {
    "v1.1-scan": (dict(family="v1.1", num_layers=2, num_decoder_layers=2, seed=3,
                       eos_logit_scale=2.0), dict(scan_layers=True), (1, 3, 4)),
    "v1.0-deeper-decoder": (dict(family="v1.0", num_layers=2, num_decoder_layers=3, seed=2,
                                 embedding_std=0.1, eos_logit_scale=3.0), {}, (4,)),
}


def _lengths(tokens):
  """Generated length per row (EOS included), MAX_LEN + 1 when a row has no EOS."""
  return [list(row).index(1) + 1 if 1 in row else MAX_LEN + 1 for row in tokens]


_CASES = {}


def _case(name):
  if name not in _CASES:
    hf_kwargs, overrides, beam_counts = CASES[name]
    hf_model = hf_reference.tiny_hf_t5(**hf_kwargs)
    config = T5Config.from_hf_dict(hf_model.config.to_dict(),
                                   tie_word_embeddings=hf_kwargs["family"] == "v1.0", **overrides)
    enc = padded_encoder_inputs()
    expected = {(n, a): (hf_reference.hf_beam_generate(hf_model, enc, MAX_LEN, n, a) if n > 1
                         else hf_reference.hf_greedy_generate(hf_model, enc, MAX_LEN))
                for n in beam_counts for a in PENALTIES}
    _CASES[name] = dict(hf=hf_model, model=T5(config), enc=enc, expected=expected,
                        params=hf_state_dict_to_params(hf_reference.numpy_state_dict(hf_model),
                                                       config))
  return _CASES[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hf_beams_are_a_meaningful_target(name):
  expected = _case(name)["expected"]
  greedy = hf_reference.hf_greedy_generate(_case(name)["hf"], _case(name)["enc"], MAX_LEN)
  for n in {n for n, _ in expected}:
    outputs = [expected[(n, a)] for a in PENALTIES]
    lengths = sum((_lengths(t) for t in outputs), [])
    assert len(set(lengths)) >= 3, (n, outputs)  # rows finish at different lengths
    assert min(lengths) <= MAX_LEN - 3, (n, outputs)  # EOS mid-sequence
    if n > 1:
      # Beams matter, and the length penalty changes the winners.
      assert all((t != greedy).any(axis=1).sum() >= 3 for t in outputs), (n, outputs)
      assert any((outputs[0] != o).any() for o in outputs[1:]), (n, outputs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_beam_search_matches_hf_generate(name):
  case = _case(name)
  model = case["model"]
  for n in sorted({n for n, _ in case["expected"]}):
    search = jax.jit(lambda p, e, a, n=n: beam_search(model, p, e, MAX_LEN, n, a))
    for a in PENALTIES:  # traced length penalty: one compilation per beam count
      tokens = np.asarray(search(case["params"], case["enc"], a))
      assert tokens.shape == (case["enc"].shape[0], MAX_LEN) and tokens.dtype == np.int32
      np.testing.assert_array_equal(tokens, case["expected"][(n, a)], err_msg=f"{n} beams, {a}")


def test_routed_beams_read_their_rows_task_ids():
  """Each row's beams decode with that row's routing: mixed ids == each id alone."""
  case = _case("v1.0-deeper-decoder")
  config = case["model"].config
  adapter = AdapterConfig(kind="poly", rank=2, n_tasks=2, n_skills=3, n_heads=2,
                          target_modules="qv")
  model = T5(config, adapter=adapter)
  enc = case["enc"]
  shapes = flax.linen.meta.unbox(
      jax.eval_shape(model.init, jax.random.PRNGKey(0), enc, enc[:, :4])["params"])
  rng = np.random.default_rng(1)
  flat_base = flax.traverse_util.flatten_dict(case["params"])
  params = flax.traverse_util.unflatten_dict({  # adapters random (LoRA B is zero at init)
      path: flat_base[path] if path in flat_base
      else rng.normal(0.0, 0.5, s.shape).astype(s.dtype)
      for path, s in flax.traverse_util.flatten_dict(shapes).items()})
  search = jax.jit(lambda p, e, t: beam_search(model, p, e, MAX_LEN, 3, 1.0, task_ids=t))
  mixed_ids = np.array([0, 1, 1, 0, 1, 0], np.int32)
  mixed = np.asarray(search(params, enc, mixed_ids))
  alone = [np.asarray(search(params, enc, np.full_like(mixed_ids, task))) for task in (0, 1)]
  np.testing.assert_array_equal(mixed, np.where((mixed_ids == 0)[:, None], *alone))
  assert (alone[0] != alone[1]).any(axis=1).sum() >= 2  # routing changes the outputs
