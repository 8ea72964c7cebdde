"""Merged kernels (a plain T5) give the adapted model's outputs."""

from __future__ import annotations

import flax
import jax.numpy as jnp
import numpy as np
import pytest

from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.adapters.merge import merge_adapters
from mhr_jax.models import T5
from tests.utils import DEC, ENC, random_params, tiny_config

IDS = np.array([2, 0, 1, 2], np.int32)


def _logits(config, adapter, params, ids=IDS):
  return np.asarray(T5(config, adapter=adapter).apply({"params": params}, ENC, DEC,
                                                      task_ids=jnp.asarray(ids)))


@pytest.mark.parametrize("adapter,scan", [
    (AdapterConfig(kind="poly", rank=2, n_tasks=3, n_skills=3, n_heads=2,
                   target_modules="all_linear"), False),
    (AdapterConfig(kind="poly", rank=2, n_tasks=3, n_skills=3, n_heads=4, scaling=0.3,
                   target_modules="qv", shared_routing=True, straight_through=True), True),
    (AdapterConfig(kind="lora", rank=3, target_modules="all_linear"), False),
    (AdapterConfig(kind="ia3", target_modules="ia3"), False),
], ids=["mhr", "mhr_shared_scan_st", "lora", "ia3"])
def test_merged_model_equals_adapted_model(adapter, scan):
  config = tiny_config(scan_layers=scan)
  params = random_params(config, adapter, seed=7)
  adapted = _logits(config, adapter, params)
  # (Each scanned forward compiles its scan body anew: one task is enough there.)
  tasks = ([2] if scan else sorted(set(IDS.tolist()))) if adapter.routed else [0]
  original = flax.traverse_util.flatten_dict(params, sep="/")
  for t in tasks:
    merged = flax.traverse_util.flatten_dict(merge_adapters(params, adapter, task_id=t),
                                             sep="/")
    assert set(merged) == {p for p in original if "adapter" not in p and p[:6] != "router"}
    changed = [p for p in merged if np.abs(merged[p] - original[p]).max() > 1e-4]
    assert changed and all(p.endswith("kernel") for p in changed)
    plain = _logits(config, None, flax.traverse_util.unflatten_dict(merged, sep="/"))
    rows = IDS == t if adapter.routed else slice(None)
    np.testing.assert_allclose(plain[rows], adapted[rows], atol=1e-4)


def test_merge_rejects_an_out_of_range_task():
  adapter = AdapterConfig(kind="poly", n_tasks=3, n_skills=2, target_modules="qv")
  params = random_params(tiny_config(), adapter)
  with pytest.raises(ValueError, match=r"task ids \[3\].*n_tasks=3"):
    merge_adapters(params, adapter, task_id=3)
