"""Builds the adapter of one projection (and the shared router) from an AdapterConfig."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from mhr_jax.adapters.config import KINDS
from mhr_jax.adapters.ia3 import IA3Adapter
from mhr_jax.adapters.lora import LoraAdapter
from mhr_jax.adapters.poly import PolyAdapter
from mhr_jax.adapters.routing import Router, router_from_config

ADAPTER_CLASSES = {"lora": LoraAdapter, "poly": PolyAdapter, "ia3": IA3Adapter}
assert set(ADAPTER_CLASSES) == set(KINDS)


def build_adapter(cfg, in_features: int, out_features: int, kernel_axes: tuple[str, str],
                  dtype: Any, param_dtype: Any, name: str = "adapter") -> nn.Module:
  """The adapter module of a projection [in, out]: called as layer(x, y, inputs, kernel=...)."""
  cls = ADAPTER_CLASSES[cfg.kind]
  return cls(cfg, in_features, out_features, tuple(kernel_axes), dtype=dtype,
             param_dtype=param_dtype, name=name)


def build_shared_router(cfg, name: str = "router") -> Router:
  """One routing table Z for all layers (`AdapterConfig.shared_routing`)."""
  if not cfg.routed:
    raise ValueError(f"shared routing needs kind='poly', got kind={cfg.kind!r}")
  return router_from_config(cfg, name=name)
