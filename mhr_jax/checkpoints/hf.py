"""Hugging Face T5 checkpoint directories <-> our parameter tree.

A HF dir holds `config.json` plus the weights as `model.safetensors`, sharded
safetensors (`model.safetensors.index.json`), or `pytorch_model.bin`
(read only when torch is importable). Names map as follows (torch
`nn.Linear.weight` is [out, in]; our kernels are [in, out]):

  shared.weight                                  token_embedder/embedding
  {enc}.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, heads]
                                                 encoder/relpos_bias/rel_embedding [heads, buckets]
  encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight
                                                 encoder/layers_{i}/attention/{query,key,value,out}/kernel
  encoder.block.{i}.layer.0.layer_norm.weight    encoder/layers_{i}/pre_attention_layer_norm/scale
  encoder.block.{i}.layer.1.DenseReluDense.{wi,wi_0,wi_1,wo}.weight
                                                 encoder/layers_{i}/mlp/{...}/kernel
  encoder.block.{i}.layer.1.layer_norm.weight    encoder/layers_{i}/pre_mlp_layer_norm/scale
  encoder.final_layer_norm.weight                encoder/encoder_norm/scale
  decoder.block.{i}.layer.0.SelfAttention.*      decoder/layers_{i}/self_attention/*
  decoder.block.{i}.layer.0.layer_norm.weight    decoder/layers_{i}/pre_self_attention_layer_norm/scale
  decoder.block.{i}.layer.1.EncDecAttention.*    decoder/layers_{i}/encoder_decoder_attention/*
  decoder.block.{i}.layer.1.layer_norm.weight    decoder/layers_{i}/pre_cross_attention_layer_norm/scale
  decoder.block.{i}.layer.2.DenseReluDense.*     decoder/layers_{i}/mlp/*
  decoder.block.{i}.layer.2.layer_norm.weight    decoder/layers_{i}/pre_mlp_layer_norm/scale
  decoder.final_layer_norm.weight                decoder/decoder_norm/scale
  lm_head.weight [vocab, embed]                  logits_dense/kernel [embed, vocab] (untied only)

With `config.scan_layers` the per-layer arrays are stacked along a leading
axis under `encoder/layers/...` and `decoder/layers/...`.

The head is tied exactly when the checkpoint has no `lm_head.weight` or one
equal to `shared.weight` (transformers 5 writes `tie_word_embeddings: true`
for every T5 and omits `lm_head.weight` when it is tied); the decoder-output
scaling comes from `config.json` (`scale_decoder_outputs`, or
`tie_word_embeddings` in files written before transformers 5).

Loaders return nested dicts of plain numpy arrays (no `nn.Partitioned`
boxes) in `config.param_dtype`; `model.apply({'params': params}, ...)` takes
them as they are. The exporters accept boxed or plain trees.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Mapping, NamedTuple, Optional

import flax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from mhr_jax import errors
from mhr_jax.models.t5_config import T5Config

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"
TORCH_INDEX_NAME = "pytorch_model.bin.index.json"
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"

# Where the untied output projection lives in our tree (T5.setup's `logits_dense`).
LOGITS_PATH = ("logits_dense", "kernel")
EMBEDDING_PATH = ("token_embedder", "embedding")

# Keys some HF checkpoints carry that hold nothing of their own: copies of the
# tied embedding, and a cross-attention position table T5 never uses.
_ALIASES_OF_SHARED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


class CheckpointMismatchError(ValueError):
  """A checkpoint's tensors do not fit the architecture; lists every problem at once.

  Attributes:
    missing: HF names the architecture needs that the checkpoint lacks.
    unexpected: names the checkpoint has that the architecture does not use.
    shape_mismatches: {name: (expected shape, found shape)}.
  """

  def __init__(self, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
               shape_mismatches: Optional[Mapping[str, tuple]] = None, source: str = "",
               notes: Iterable[str] = ()):
    self.missing = sorted(missing)
    self.unexpected = sorted(unexpected)
    self.shape_mismatches = dict(sorted((shape_mismatches or {}).items()))
    where = f"checkpoint {source}" if source else "checkpoint"
    lines = [f"{where} does not match the T5 architecture:"]
    if self.missing:
      lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
    if self.unexpected:
      lines.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
    if self.shape_mismatches:
      lines.append(f"  shape mismatches ({len(self.shape_mismatches)}):")
      lines.extend(f"    {k}: expected {tuple(e)}, found {tuple(f)}"
                   for k, (e, f) in self.shape_mismatches.items())
    lines.extend(f"  note: {n}" for n in notes)
    super().__init__("\n".join(lines))


class _Entry(NamedTuple):
  """One tensor: its HF name, our (unrolled) path, our shape, whether HF stores it transposed."""
  hf_name: str
  path: tuple[str, ...]
  shape: tuple[int, ...]
  transpose: bool


def _layout(config: T5Config) -> list[_Entry]:
  """Every tensor of the architecture, in a fixed order, with unrolled layer paths."""
  e, v, f = config.d_model, config.vocab_size, config.d_ff
  inner = config.num_heads * config.d_kv
  entries = [_Entry("shared.weight", EMBEDDING_PATH, (v, e), False)]

  def attention(hf: str, ours: tuple[str, ...]):
    for hf_proj, proj, shape in (("q", "query", (e, inner)), ("k", "key", (e, inner)),
                                 ("v", "value", (e, inner)), ("o", "out", (inner, e))):
      entries.append(_Entry(f"{hf}.{hf_proj}.weight", ours + (proj, "kernel"), shape, True))

  def mlp(hf: str, ours: tuple[str, ...]):
    names = ("wi_0", "wi_1") if config.is_gated else ("wi",)
    for n in names:
      entries.append(_Entry(f"{hf}.{n}.weight", ours + (n, "kernel"), (e, f), True))
    entries.append(_Entry(f"{hf}.wo.weight", ours + ("wo", "kernel"), (f, e), True))

  def norm(hf: str, ours: tuple[str, ...]):
    entries.append(_Entry(f"{hf}.weight", ours + ("scale",), (e,), False))

  relpos_shape = (config.num_heads, config.relative_attention_num_buckets)
  for stack, n_layers in (("encoder", config.num_layers), ("decoder", config.num_decoder_layers)):
    entries.append(_Entry(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        (stack, "relpos_bias", "rel_embedding"), relpos_shape, True))
    for i in range(n_layers):
      hf, ours = f"{stack}.block.{i}.layer", (stack, f"layers_{i}")
      if stack == "encoder":
        norm(f"{hf}.0.layer_norm", ours + ("pre_attention_layer_norm",))
        attention(f"{hf}.0.SelfAttention", ours + ("attention",))
        norm(f"{hf}.1.layer_norm", ours + ("pre_mlp_layer_norm",))
        mlp(f"{hf}.1.DenseReluDense", ours + ("mlp",))
      else:
        norm(f"{hf}.0.layer_norm", ours + ("pre_self_attention_layer_norm",))
        attention(f"{hf}.0.SelfAttention", ours + ("self_attention",))
        norm(f"{hf}.1.layer_norm", ours + ("pre_cross_attention_layer_norm",))
        attention(f"{hf}.1.EncDecAttention", ours + ("encoder_decoder_attention",))
        norm(f"{hf}.2.layer_norm", ours + ("pre_mlp_layer_norm",))
        mlp(f"{hf}.2.DenseReluDense", ours + ("mlp",))
    final = "encoder_norm" if stack == "encoder" else "decoder_norm"
    norm(f"{stack}.final_layer_norm", (stack, final))
  if not config.tie_word_embeddings:
    entries.append(_Entry("lm_head.weight", LOGITS_PATH, (e, v), True))
  return entries


def _hf_shape(entry: _Entry) -> tuple[int, ...]:
  return tuple(reversed(entry.shape)) if entry.transpose else entry.shape


def _is_layer(name: str) -> bool:
  return name.startswith("layers_") and name[len("layers_"):].isdigit()


def _stack_layers(flat: dict[tuple[str, ...], np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
  """{(stack, 'layers_i', *rest): x} -> {(stack, 'layers', *rest): stack_i(x)} (scan layout)."""
  grouped: dict[tuple[str, ...], dict[int, np.ndarray]] = {}
  out = {}
  for path, x in flat.items():
    if len(path) > 1 and _is_layer(path[1]):
      grouped.setdefault((path[0], "layers") + path[2:], {})[int(path[1][7:])] = x
    else:
      out[path] = x
  for path, layers in grouped.items():
    out[path] = np.stack([layers[i] for i in range(len(layers))], axis=0)
  return out


def _unstack_layers(flat: Mapping[tuple[str, ...], Any], config: T5Config
                    ) -> dict[tuple[str, ...], Any]:
  """Inverse of `_stack_layers`: (stack, 'layers', *rest) [n, ...] -> (stack, 'layers_i', *rest)."""
  out = {}
  for path, x in flat.items():
    if len(path) > 1 and path[1] == "layers":
      n = config.num_layers if path[0] == "encoder" else config.num_decoder_layers
      if np.shape(x)[0] != n:
        raise CheckpointMismatchError(shape_mismatches={
            "/".join(path): ((n,) + tuple(np.shape(x)[1:]), tuple(np.shape(x)))},
            source="(scanned params)")
      for i in range(n):
        out[(path[0], f"layers_{i}") + path[2:]] = x[i]
    else:
      out[path] = x
  return out


def _cast(x: np.ndarray, dtype) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x).astype(dtype, copy=False))


def hf_state_dict_to_params(state_dict: Mapping[str, Any], config: T5Config) -> dict:
  """HF tensors {name: array} -> our nested params (plain numpy, `config.param_dtype`).

  The head follows `config.tie_word_embeddings`: tied configs accept an
  `lm_head.weight` only if it equals `shared.weight`; untied configs require
  one. Copies of the embedding (`{encoder,decoder}.embed_tokens.weight`) and
  the unused decoder cross-attention position table are ignored.

  Raises:
    CheckpointMismatchError: listing every missing key, unexpected key and
      shape mismatch.
  """
  state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
  layout = _layout(config)
  expected = {entry.hf_name: entry for entry in layout}
  missing = [k for k in expected if k not in state_dict]
  unexpected, mismatched, notes = [], {}, []
  shared = state_dict.get("shared.weight")
  for name, x in state_dict.items():
    if name in expected:
      if tuple(x.shape) != _hf_shape(expected[name]):
        mismatched[name] = (_hf_shape(expected[name]), tuple(x.shape))
    elif name in _IGNORED:
      continue
    elif name in _ALIASES_OF_SHARED and shared is not None and x.shape == shared.shape:
      continue
    elif (name == "lm_head.weight" and config.tie_word_embeddings and shared is not None
          and x.shape == shared.shape and np.array_equal(x, shared)):
      continue  # a tied head saved explicitly (older checkpoints)
    else:
      unexpected.append(name)
      if name == "lm_head.weight":
        notes.append("lm_head.weight differs from shared.weight but the config ties the head "
                     "(tie_word_embeddings=True)")
  if missing or unexpected or mismatched:
    raise CheckpointMismatchError(missing, unexpected, mismatched, notes=notes)

  dtype = jnp.dtype(config.param_dtype)
  flat = {}
  for entry in layout:
    x = state_dict[entry.hf_name]
    flat[entry.path] = _cast(x.T if entry.transpose else x, dtype)
  if config.scan_layers:
    flat = _stack_layers(flat)
  return flax.traverse_util.unflatten_dict(flat)


def params_to_hf_state_dict(params: Mapping[str, Any], config: T5Config, *,
                            strict: bool = True) -> dict[str, np.ndarray]:
  """Our params (boxed or plain; unrolled or scanned per `config.scan_layers`) -> HF tensors.

  Arrays keep their dtype and come back as contiguous numpy arrays. Tied
  configs produce no `lm_head.weight` (as transformers saves them).

  Args:
    params: the tree under 'params' (a {'params': tree} wrapper is accepted).
    strict: if True, leaves the mapping does not know (adapter parameters,
      a `logits_dense` under a tied config) raise; if False they are dropped.

  Raises:
    CheckpointMismatchError: missing / unexpected leaves or wrong shapes.
  """
  params = flax.core.meta.unbox(flax.core.unfreeze(params))
  if set(params) == {"params"}:
    params = params["params"]
  flat = flax.traverse_util.flatten_dict(params)
  if config.scan_layers:
    flat = _unstack_layers(flat, config)
  layout = _layout(config)
  by_path = {entry.path: entry for entry in layout}
  missing = ["/".join(e.path) for e in layout if e.path not in flat]
  unexpected = ["/".join(p) for p in flat if p not in by_path]
  mismatched = {"/".join(p): (by_path[p].shape, tuple(np.shape(x)))
                for p, x in flat.items() if p in by_path and tuple(np.shape(x)) != by_path[p].shape}
  if missing or mismatched or (unexpected and strict):
    raise CheckpointMismatchError(missing, unexpected if strict else (), mismatched,
                                  source="(params)")
  out = {}
  for entry in layout:
    x = np.asarray(flat[entry.path])
    out[entry.hf_name] = np.ascontiguousarray(x.T if entry.transpose else x)
  return out


# --- Reading and writing directories ----------------------------------------


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    return load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise errors.CorruptInputError(
        f"cannot read {path} ({errors.one_line(e)}, {os.path.getsize(path)} bytes): the file is "
        "truncated or not safetensors; copy the checkpoint again") from None


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional: only .bin checkpoints need it)
  except ImportError as e:
    raise ImportError(f"{path} is a PyTorch pickle; reading it needs torch, which is not "
                      "installed (convert the checkpoint to safetensors instead)") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  out = {}
  for k, t in state.items():
    t = t.detach()
    # numpy has no bfloat16 view of a torch tensor: widen (exactly) to float32.
    out[k] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
  return out


def read_hf_state_dict(directory: str) -> dict[str, np.ndarray]:
  """All tensors of a HF checkpoint dir, as numpy arrays in their stored dtype."""
  def index(name, reader):
    with open(os.path.join(directory, name)) as fh:
      files = sorted(set(json.load(fh)["weight_map"].values()))
    state = {}
    for fname in files:
      state.update(reader(os.path.join(directory, fname)))
    return state

  if os.path.exists(os.path.join(directory, SAFETENSORS_INDEX_NAME)):
    return index(SAFETENSORS_INDEX_NAME, _read_safetensors)
  if os.path.exists(os.path.join(directory, SAFETENSORS_NAME)):
    return _read_safetensors(os.path.join(directory, SAFETENSORS_NAME))
  if os.path.exists(os.path.join(directory, TORCH_INDEX_NAME)):
    return index(TORCH_INDEX_NAME, _read_torch)
  if os.path.exists(os.path.join(directory, TORCH_NAME)):
    return _read_torch(os.path.join(directory, TORCH_NAME))
  raise errors.MissingInputError(
      f"no weights in {directory!r}: expected one of {SAFETENSORS_NAME}, "
      f"{SAFETENSORS_INDEX_NAME}, {TORCH_NAME}, {TORCH_INDEX_NAME}; found "
      f"{sorted(os.listdir(directory))}")


def _is_untied(state_dict: Mapping[str, np.ndarray]) -> bool:
  head, shared = state_dict.get("lm_head.weight"), state_dict.get("shared.weight")
  if head is None:
    return False
  return shared is None or head.shape != shared.shape or not np.array_equal(head, shared)


def _describe(config: T5Config) -> str:
  fields = ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers",
            "num_decoder_layers", "relative_attention_num_buckets", "feed_forward_proj",
            "tie_word_embeddings")
  return "expected from config.json: " + ", ".join(f"{k}={getattr(config, k)}" for k in fields)


def load_hf_checkpoint(directory: str, **config_overrides) -> tuple[T5Config, dict]:
  """Reads a local HF T5 checkpoint dir -> (T5Config, params). Never downloads.

  Args:
    directory: a local directory with `config.json` and the weights.
    **config_overrides: T5Config fields to set, e.g. `dtype='bfloat16'`,
      `param_dtype='bfloat16'`, `scan_layers=True`, `dropout_rate=0.0`.
      `tie_word_embeddings` is decided by the weights unless given here.

  Returns:
    The config and a nested dict of numpy arrays in `config.param_dtype`.

  Raises:
    FileNotFoundError: the directory, its config.json or its weights are missing.
    CheckpointMismatchError: the tensors do not fit the config.
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise errors.MissingInputError(
        f"HF checkpoint directory {directory!r} does not exist (only local directories are "
        "read; nothing is downloaded -- fetch the model with `huggingface-cli download` or "
        "`save_pretrained` first)")
  config_path = os.path.join(directory, CONFIG_NAME)
  if not os.path.exists(config_path):
    raise errors.MissingInputError(
        f"{config_path} not found: {directory!r} is not a HF checkpoint dir")
  state_dict = read_hf_state_dict(directory)
  if "tie_word_embeddings" not in config_overrides:
    config_overrides["tie_word_embeddings"] = not _is_untied(state_dict)
  config = T5Config.from_hf_json(config_path, **config_overrides)
  try:
    params = hf_state_dict_to_params(state_dict, config)
  except CheckpointMismatchError as err:
    raise CheckpointMismatchError(err.missing, err.unexpected, err.shape_mismatches,
                                  source=repr(directory),
                                  notes=[_describe(config)]) from None
  return config, params


def save_hf_checkpoint(params: Mapping[str, Any], config: T5Config, directory: str, *,
                       overwrite: bool = False) -> str:
  """Writes a HF T5 checkpoint dir that `T5ForConditionalGeneration.from_pretrained` loads.

  Files: config.json (`config.to_hf_dict()`), generation_config.json and
  model.safetensors (+ `lm_head.weight` when the head is untied). Everything
  is written into a temporary sibling directory first and renamed into
  place, so `directory` is never left half-written.

  Args:
    params: our tree (boxed or plain, unrolled or scanned per config).
    config: the architecture.
    directory: the target; must not exist unless `overwrite=True`, in which
      case the whole directory is replaced.

  Returns:
    `directory`.
  """
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f"{directory!r} exists; pass overwrite=True to replace it")
  state_dict = params_to_hf_state_dict(params, config)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
  try:
    with open(os.path.join(tmp, CONFIG_NAME), "w") as fh:
      json.dump(config.to_hf_dict(), fh, indent=2, sort_keys=True)
    with open(os.path.join(tmp, GENERATION_CONFIG_NAME), "w") as fh:
      json.dump({"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, fh,
                indent=2)
    save_file(state_dict, os.path.join(tmp, SAFETENSORS_NAME), metadata={"format": "pt"})
    if os.path.exists(directory):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
      os.rename(directory, os.path.join(old, "replaced"))
      os.rename(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, directory)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return directory
