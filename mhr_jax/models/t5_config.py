"""T5 hyper-parameters, read from and written to Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

_FFN_ACTIVATIONS = ("relu", "gated-gelu")
# Dtypes are kept by name (gin- and JSON-friendly); modules take `jnp.dtype(name)`.
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture of a T5 encoder-decoder.

  T5 v1.0: `feed_forward_proj='relu'`, `tie_word_embeddings=True`,
  `scale_decoder_outputs=True` (logits = (h * d_model^-0.5) @ embedding^T).
  T5 v1.1 / T0 / Flan-T5: `feed_forward_proj='gated-gelu'` (tanh GELU),
  `tie_word_embeddings=False` (separate `logits_dense`), no output scaling.
  """

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_decoder_layers: int | None = None
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"
  tie_word_embeddings: bool = True
  scale_decoder_outputs: bool = True
  # Numerics and memory (not part of the HF config).
  dtype: str = "float32"  # activations
  param_dtype: str = "float32"  # the backbone's parameters
  scan_layers: bool = False
  remat: bool = False

  def __post_init__(self):
    if self.feed_forward_proj not in _FFN_ACTIVATIONS:
      raise ValueError(
          f"feed_forward_proj={self.feed_forward_proj!r} is not supported; "
          f"valid choices: {list(_FFN_ACTIVATIONS)}")
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in DTYPES:
        raise ValueError(f"{field}={getattr(self, field)!r} is not supported; "
                         f"valid choices: {list(DTYPES)}")
    if self.num_decoder_layers is None:
      object.__setattr__(self, "num_decoder_layers", self.num_layers)

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)

  # --- Hugging Face config.json ------------------------------------------
  _HF_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers",
                "num_decoder_layers", "num_heads",
                "relative_attention_num_buckets",
                "relative_attention_max_distance", "dropout_rate",
                "layer_norm_epsilon", "feed_forward_proj")

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> "T5Config":
    """Builds a config from a parsed HF `config.json`.

    transformers 5 writes `scale_decoder_outputs` and always
    `tie_word_embeddings: true`; older files only carry
    `tie_word_embeddings`, which then also decides the scaling. Whether the
    head is really tied is decided by the checkpoint loader (presence of
    `lm_head.weight`), which may override `tie_word_embeddings`.
    """
    kwargs = {k: hf[k] for k in cls._HF_FIELDS if k in hf and hf[k] is not None}
    if kwargs.get("feed_forward_proj") == "gelu":  # legacy alias
      kwargs["feed_forward_proj"] = "gated-gelu"
    tie = bool(hf.get("tie_word_embeddings", True))
    kwargs["tie_word_embeddings"] = tie
    kwargs["scale_decoder_outputs"] = bool(hf.get("scale_decoder_outputs", tie))
    kwargs.update(overrides)
    return cls(**kwargs)

  @classmethod
  def from_hf_json(cls, path: str, **overrides) -> "T5Config":
    if os.path.isdir(path):
      path = os.path.join(path, "config.json")
    with open(path) as f:
      return cls.from_hf_dict(json.load(f), **overrides)

  def to_hf_dict(self) -> dict[str, Any]:
    hf = {k: getattr(self, k) for k in self._HF_FIELDS}
    hf.update(
        model_type="t5",
        architectures=["T5ForConditionalGeneration"],
        is_encoder_decoder=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=self.tie_word_embeddings,
        scale_decoder_outputs=self.scale_decoder_outputs,
        dense_act_fn="gelu_new" if self.is_gated else "relu",
        is_gated_act=self.is_gated,
    )
    return hf
