"""AdapterConfig: validation messages and which projections each target preset selects."""

from __future__ import annotations

import dataclasses

import pytest

from mhr_jax.adapters.config import TARGET_PRESETS, AdapterConfig


def _paths(gated: bool, scanned: bool = False) -> list[str]:
  """Every projection path of a 2-layer T5."""
  mlp = ["wi_0", "wi_1", "wo"] if gated else ["wi", "wo"]
  layers = ["layers"] if scanned else ["layers_0", "layers_1"]
  out = []
  for layer in layers:
    out += [f"encoder/{layer}/attention/{p}" for p in ("query", "key", "value", "out")]
    out += [f"encoder/{layer}/mlp/{p}" for p in mlp]
    for block in ("self_attention", "encoder_decoder_attention"):
      out += [f"decoder/{layer}/{block}/{p}" for p in ("query", "key", "value", "out")]
    out += [f"decoder/{layer}/mlp/{p}" for p in mlp]
  return out


def _selected(preset: str, gated=False, scanned=False) -> set[str]:
  cfg = AdapterConfig(target_modules=preset)
  return {p for p in _paths(gated, scanned) if cfg.targets(p)}


@pytest.mark.parametrize("scanned", [False, True])
def test_presets_select_the_named_projections(scanned):
  sel = lambda preset, gated=False: {p.replace("layers/", "layers_0/") if scanned else p
                                     for p in _selected(preset, gated, scanned)}
  layer0 = lambda paths: {p for p in paths if "layers_0" in p}
  att = {f"{s}/{p}" for s in ("encoder/layers_0/attention", "decoder/layers_0/self_attention",
                              "decoder/layers_0/encoder_decoder_attention")
         for p in ("query", "key", "value", "out")}
  assert layer0(sel("attention")) == att
  assert layer0(sel("qv")) == {p for p in att if p.endswith(("query", "value"))}
  assert layer0(sel("self_attention_qv")) == {
      "encoder/layers_0/attention/query", "encoder/layers_0/attention/value",
      "decoder/layers_0/self_attention/query", "decoder/layers_0/self_attention/value"}
  assert layer0(sel("cross_attention")) == {p for p in att if "encoder_decoder" in p}
  assert layer0(sel("ffn", gated=True)) == {
      f"{s}/layers_0/mlp/{p}" for s in ("encoder", "decoder") for p in ("wi_0", "wi_1", "wo")}
  assert layer0(sel("all_linear")) == layer0(set(
      p.replace("layers/", "layers_0/") for p in _paths(False, scanned)))
  assert layer0(sel("ia3")) == {p for p in att if p.endswith(("key", "value"))} | {
      "encoder/layers_0/mlp/wo", "decoder/layers_0/mlp/wo"}
  if not scanned:
    assert sel("attention") - layer0(sel("attention"))  # layer 1 too


def test_custom_regex_is_matched_against_the_whole_path():
  cfg = AdapterConfig(target_modules=r"decoder/layers_1/.*/value")
  assert {p for p in _paths(False) if cfg.targets(p)} == {
      "decoder/layers_1/self_attention/value", "decoder/layers_1/encoder_decoder_attention/value"}
  assert not AdapterConfig(target_modules="query").targets("encoder/layers_0/attention/query")


def test_ia3_feedforward_default_is_wo():
  cfg = AdapterConfig(kind="ia3", target_modules="ia3")
  assert cfg.is_ia3_feedforward("decoder/layers_0/mlp/wo")
  assert not cfg.is_ia3_feedforward("decoder/layers_0/self_attention/value")


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="prefix"), r"kind='prefix'.*\['lora', 'poly', 'ia3'\]"),
    (dict(rank=0), "rank=0"),
    (dict(n_heads=-2), "n_heads=-2"),
    (dict(target_modules="(attention"), r"target_modules='\(attention'.*'all_linear'"),
    (dict(kind="lora", shared_routing=True), "shared_routing=True.*kind='lora'"),
    (dict(routing_temperature=0.0), "routing_temperature=0.0"),
    (dict(dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
])
def test_invalid_values_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    AdapterConfig(**kwargs)


def test_scale_defaults_to_one_over_rank_and_round_trips():
  assert AdapterConfig(rank=4).scale == 0.25
  assert AdapterConfig(rank=4, scaling=2.0).scale == 2.0
  cfg = AdapterConfig(kind="poly", n_heads=2, shared_routing=True)
  assert AdapterConfig(**dataclasses.asdict(cfg)) == cfg  # checkpoints store it as a dict
  hash(cfg)  # a Flax module attribute
  assert set(TARGET_PRESETS) >= {"attention", "all_linear", "self_attention_qv",
                                 "cross_attention", "ffn"}
