"""PEFT Poly/MHR adapters (`save_pretrained` directories) <-> our parameters.

A PEFT Poly directory holds `adapter_config.json` (peft_type 'POLY', r,
n_tasks, n_skills, n_splits, target_modules) and `adapter_model.safetensors`
with, per adapted `nn.Linear` named e.g. `encoder.block.0.layer.0.SelfAttention.q`:

  base_model.model.<name>.poly_lora_A                [n_splits, n_skills, in/n_splits, r]
  base_model.model.<name>.poly_lora_B                [n_splits, n_skills, r, out/n_splits]
  base_model.model.<name>.poly_router.module_logits  [n_tasks, n_splits * n_skills]

Ours sit under `<path>/adapter/` as `skill_lora_a`, `skill_lora_b` (the same
shapes: copied as they are) and `router/routing_logits` [n_tasks, h, s]
(PEFT's `module_logits.view(-1, n_splits, n_skills)`). Module names:

  encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}   encoder/layers_{i}/attention/{query,key,value,out}
  encoder.block.{i}.layer.1.DenseReluDense.{w*}       encoder/layers_{i}/mlp/{w*}
  decoder.block.{i}.layer.0.SelfAttention.*           decoder/layers_{i}/self_attention/*
  decoder.block.{i}.layer.1.EncDecAttention.*         decoder/layers_{i}/encoder_decoder_attention/*
  decoder.block.{i}.layer.2.DenseReluDense.*          decoder/layers_{i}/mlp/*

PEFT fixes scaling = 1/r and routes every layer separately: on export a
different `scaling` is folded into B, and a shared router is copied into
every layer. Straight-through routing has no PEFT counterpart (export
refuses it); the routing temperature only matters in training.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Optional

import numpy as np
from safetensors.numpy import load_file, save_file

from mhr_jax import param_tree
from mhr_jax.adapters.config import AdapterConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_BLOCKS = {  # (stack, our block) -> (HF layer index, HF module)
    ("encoder", "attention"): ("0", "SelfAttention"),
    ("encoder", "mlp"): ("1", "DenseReluDense"),
    ("decoder", "self_attention"): ("0", "SelfAttention"),
    ("decoder", "encoder_decoder_attention"): ("1", "EncDecAttention"),
    ("decoder", "mlp"): ("2", "DenseReluDense"),
}
_HF_BLOCKS = {(stack, f"{index}.{module}"): ours
              for (stack, ours), (index, module) in _BLOCKS.items()}
_PROJECTIONS = {"query": "q", "key": "k", "value": "v", "out": "o",
                "wi": "wi", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"}
_HF_PROJECTIONS = {v: k for k, v in _PROJECTIONS.items()}
_HF_NAME = re.compile(r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d\.\w+)\.(\w+)")
_SUFFIXES = {"poly_lora_A": "skill_lora_a", "poly_lora_B": "skill_lora_b",
             "poly_router.module_logits": param_tree.ROUTER_LOGITS}


def hf_module_name(stack: str, layer: int, block: str, projection: str) -> str:
  """('encoder', 0, 'attention', 'query') -> 'encoder.block.0.layer.0.SelfAttention.q'."""
  try:
    index, module = _BLOCKS[(stack, block)]
    proj = _PROJECTIONS[projection]
  except KeyError:
    raise ValueError(f"no HF T5 module for {stack}/layers_{layer}/{block}/{projection}; known "
                     f"blocks: {sorted(_BLOCKS)}, projections: {sorted(_PROJECTIONS)}") from None
  return f"{stack}.block.{layer}.layer.{index}.{module}.{proj}"


def our_module_path(name: str) -> tuple[str, int, str, str]:
  """'decoder.block.1.layer.1.EncDecAttention.v' -> ('decoder', 1, 'encoder_decoder_attention', 'value')."""
  m = _HF_NAME.fullmatch(name)
  block = m and _HF_BLOCKS.get((m.group(1), m.group(3)))
  if not m or block is None or m.group(4) not in _HF_PROJECTIONS:
    raise ValueError(f"{name!r} is not a T5 projection PEFT Poly can adapt (expected e.g. "
                     "'encoder.block.0.layer.0.SelfAttention.q')")
  return m.group(1), int(m.group(2)), block, _HF_PROJECTIONS[m.group(4)]


def _flat(params) -> dict[str, Any]:
  """{path: array} of a parameter tree or of {'params': tree} (flax variables)."""
  if set(params) == {"params"}:
    params = params["params"]
  return param_tree.flatten(params)


def _numpy(x) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype not in (np.float32, np.float16, np.float64):
    x = x.astype(np.float32)  # e.g. bfloat16, which numpy safetensors cannot write
  return np.ascontiguousarray(x)


# --- Export ------------------------------------------------------------------


def peft_poly_state_dict(params, config: AdapterConfig) -> dict[str, np.ndarray]:
  """Our Poly/MHR parameters (unrolled or scanned) -> PEFT's saved tensors."""
  if config.kind != "poly":
    raise ValueError(f"PEFT Poly export needs kind='poly', got {config.kind!r}")
  if config.straight_through:
    raise ValueError("straight_through=True routing has no PEFT Poly counterpart")
  flat = _flat(params)
  # PEFT multiplies by 1/r; any other scaling goes into B.
  b_factor = config.scale * config.rank
  out = {}
  for module in param_tree.adapted_projections(flat):
    stack, layer, block, proj = module.split("/")
    ad = param_tree.adapter_prefix(module)
    skill_a, skill_b = flat[ad + "skill_lora_a"], np.asarray(flat[ad + "skill_lora_b"])
    z = np.asarray(param_tree.routing_logits_of(flat, module))
    if layer == "layers":  # scanned: a leading layer axis
      per_layer = [(i, np.asarray(skill_a)[i], skill_b[i], z[i] if z.ndim == 4 else z)
                   for i in range(np.shape(skill_a)[0])]
    else:
      per_layer = [(int(layer[len("layers_"):]), np.asarray(skill_a), skill_b, z)]
    for i, a, b, zi in per_layer:
      name = PREFIX + hf_module_name(stack, i, block, proj)
      out[f"{name}.poly_lora_A"] = _numpy(a)
      out[f"{name}.poly_lora_B"] = _numpy(b if np.isclose(b_factor, 1.0, rtol=0, atol=1e-7)
                                          else b.astype(np.float32) * b_factor)
      out[f"{name}.poly_router.module_logits"] = _numpy(zi.reshape(zi.shape[0], -1))
  if not out:
    raise ValueError("no Poly adapter parameters (skill_lora_a) in the tree")
  return out


def save_peft_poly(params, config: AdapterConfig, directory: str, *,
                   base_model_name_or_path: Optional[str] = None) -> str:
  """Writes a directory that `peft.PeftModel.from_pretrained(t5, directory)` loads."""
  state = peft_poly_state_dict(params, config)
  modules = sorted({k[len(PREFIX):].rsplit(".poly_", 1)[0] for k in state})
  peft_config = {
      "auto_mapping": None, "base_model_name_or_path": base_model_name_or_path,
      "exclude_modules": None, "inference_mode": True, "init_weights": True,
      "modules_to_save": None, "n_skills": config.n_skills, "n_splits": config.n_heads,
      "n_tasks": config.n_tasks, "peft_type": "POLY", "poly_type": "poly", "r": config.rank,
      "revision": None, "target_modules": modules, "task_type": "SEQ_2_SEQ_LM",
  }
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG_NAME), "w") as fh:
    json.dump(peft_config, fh, indent=2, sort_keys=True)
  save_file(state, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})
  return directory


# --- Import ------------------------------------------------------------------


def _layer_counts(base_flat: Mapping[str, Any]) -> tuple[dict[str, int], bool]:
  counts, scanned = {}, False
  for path, x in base_flat.items():
    parts = path.split("/")
    if len(parts) > 1 and parts[1] == "layers":
      scanned = True
      counts[parts[0]] = np.shape(x)[0]
    elif len(parts) > 1 and re.fullmatch(r"layers_\d+", parts[1]):
      counts[parts[0]] = max(counts.get(parts[0], 0), int(parts[1][7:]) + 1)
  return counts, scanned


def _target_regex(found: Mapping[tuple[str, str, str], set], counts: Mapping[str, int]) -> str:
  """Our `target_modules` regex for the adapted (stack, block, projection) x layers."""
  groups: dict[tuple[str, str, str], list[str]] = {}
  for (stack, block, proj), layers in sorted(found.items()):
    n = counts.get(stack, max(layers) + 1)
    if set(layers) == set(range(n)):
      layer_re = r"layers(_\d+)?"
    else:
      layer_re = "layers_(" + "|".join(str(i) for i in sorted(layers)) + ")"
    groups.setdefault((stack, layer_re, block), []).append(proj)
  return "|".join(f"{stack}/{layer_re}/{block}/({'|'.join(sorted(projs))})"
                  for (stack, layer_re, block), projs in sorted(groups.items()))


def load_peft_poly(directory: str, base_params=None) -> tuple[AdapterConfig, dict]:
  """Reads a PEFT Poly directory -> (AdapterConfig, params).

  Args:
    directory: written by PEFT's `save_pretrained` (or `save_peft_poly`).
    base_params: our backbone (unrolled or scanned); when given, the adapter
      parameters are added to it (stacked per layer if it is scanned) and the
      whole tree is returned, else only the adapter parameters (unrolled).
  """
  with open(os.path.join(directory, CONFIG_NAME)) as fh:
    pc = json.load(fh)
  if pc.get("peft_type") != "POLY" or pc.get("poly_type", "poly") != "poly":
    raise ValueError(f"{directory!r} holds a {pc.get('peft_type')!r} adapter "
                     f"(poly_type={pc.get('poly_type')!r}); only peft_type 'POLY' with "
                     "poly_type 'poly' is supported")
  config_kwargs = dict(kind="poly", rank=int(pc["r"]), n_tasks=int(pc["n_tasks"]),
                       n_skills=int(pc["n_skills"]), n_heads=int(pc["n_splits"]))
  state = load_file(os.path.join(directory, WEIGHTS_NAME))
  adapter: dict[str, np.ndarray] = {}
  found: dict[tuple[str, str, str], set] = {}
  h, s, r = config_kwargs["n_heads"], config_kwargs["n_skills"], config_kwargs["rank"]
  for key, value in state.items():
    name = key[len(PREFIX):] if key.startswith(PREFIX) else key
    for hf_suffix, ours in _SUFFIXES.items():
      if name.endswith("." + hf_suffix):
        module = name[:-len(hf_suffix) - 1]
        break
    else:
      raise ValueError(f"unexpected tensor {key!r} in {directory!r}: expected names ending in "
                       f"{sorted(_SUFFIXES)}")
    stack, layer, block, proj = our_module_path(module)
    found.setdefault((stack, block, proj), set()).add(layer)
    if ours == param_tree.ROUTER_LOGITS:
      value = value.reshape(value.shape[0], h, s)
    elif (value.ndim != 4 or value.shape[:2] != (h, s)
          or value.shape[3 if ours == "skill_lora_a" else 2] != r):
      raise ValueError(f"{key}: shape {value.shape} does not fit n_splits={h}, n_skills={s}, "
                       f"r={r} (A: [n_splits, n_skills, in/n_splits, r], B: [n_splits, "
                       "n_skills, r, out/n_splits])")
    adapter[param_tree.adapter_prefix(f"{stack}/layers_{layer}/{block}/{proj}") + ours] = (
        np.asarray(value))

  base_flat = _flat(base_params) if base_params is not None else {}
  counts, scanned = _layer_counts(base_flat)
  config = AdapterConfig(target_modules=_target_regex(found, counts), **config_kwargs)
  if scanned:
    stacked: dict[str, list] = {}
    for path, x in adapter.items():
      stack, layer, rest = path.split("/", 2)
      stacked.setdefault(f"{stack}/layers/{rest}", []).append((int(layer[7:]), x))
    adapter = {}
    for path, items in stacked.items():
      layers = sorted(i for i, _ in items)
      if layers != list(range(counts[path.split("/")[0]])):
        raise ValueError(f"{path}: PEFT adapts layers {layers} only; a scanned model needs "
                         "every layer adapted (load into an unrolled model instead)")
      adapter[path] = np.stack([x for _, x in sorted(items, key=lambda t: t[0])])
  merged = {k: v for k, v in base_flat.items() if not param_tree.is_adapter_path(k)}
  merged.update(adapter)
  return config, param_tree.unflatten(merged)
