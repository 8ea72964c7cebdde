"""AdapterConfig: which adapter (LoRA, Poly/MHR, (IA)^3) sits on which projection.

A projection is named by its module path in the parameter tree, '/'-joined:
'encoder/layers_0/attention/query', 'decoder/layers_1/encoder_decoder_attention/out',
'decoder/layers_0/mlp/wo' (under `scan_layers`: 'encoder/layers/attention/query').
`target_modules` is a preset name from `TARGET_PRESETS` or a regular expression
that must match the whole path (`re.fullmatch`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Optional

KINDS = ("lora", "poly", "ia3")

_LAYER = r"(encoder|decoder)/layers(_\d+)?"
_ANY_ATTENTION = r"(attention|self_attention|encoder_decoder_attention)"
_SELF_ATTENTION = r"(encoder/layers(_\d+)?/attention|decoder/layers(_\d+)?/self_attention)"
_FFN = rf"{_LAYER}/mlp/(wi|wi_0|wi_1|wo)"

# Named target sets (regexes over module paths, matched with re.fullmatch).
TARGET_PRESETS = {
    # q, k, v, o of every attention (encoder self, decoder self, cross).
    "attention": rf"{_LAYER}/{_ANY_ATTENTION}/(query|key|value|out)",
    # q and v of every attention: PEFT's default for T5 (['q', 'v']).
    "qv": rf"{_LAYER}/{_ANY_ATTENTION}/(query|value)",
    "self_attention": rf"{_SELF_ATTENTION}/(query|key|value|out)",
    "self_attention_qv": rf"{_SELF_ATTENTION}/(query|value)",
    "cross_attention": r"decoder/layers(_\d+)?/encoder_decoder_attention/(query|key|value|out)",
    "ffn": _FFN,
    "all_linear": rf"{_LAYER}/({_ANY_ATTENTION}/(query|key|value|out)|mlp/(wi|wi_0|wi_1|wo))",
    # PEFT's (IA)^3 default for T5: k, v of every attention and the FFN output.
    "ia3": rf"{_LAYER}/({_ANY_ATTENTION}/(key|value)|mlp/wo)",
}


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str) -> re.Pattern:
  return re.compile(pattern)


def _check_regex(field: str, value: str, hint: str = "") -> None:
  try:
    _compiled(value)
  except re.error as e:
    raise ValueError(f"{field}={value!r} is not a valid regular expression ({e}){hint}") from None


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Configuration of the adapters of one model.

  Attributes:
    kind: 'lora' (one LoRA per projection), 'poly' (PEFT's Poly tuner: a
      routed inventory of LoRA skills, Polytropon when `n_heads == 1`, MHR
      when `n_heads > 1`), or 'ia3' (learned scaling vectors).
    rank: LoRA rank r (of every skill).
    n_tasks: rows of the routing table Z (poly only).
    n_skills: skills |Φ| per adapted projection (poly only).
    n_heads: MHR heads h ("splits" in PEFT): the input and output of each
      skill are cut into h blocks, each routed separately. 1 = Polytropon.
    scaling: factor on the LoRA product; None = 1/rank (PEFT's Poly, mttl).
    target_modules: a preset of `TARGET_PRESETS` or a regex (re.fullmatch)
      over module paths.
    shared_routing: one routing table Z for all layers (a `router` module at
      the top of the tree) instead of one per adapted projection.
    routing_temperature: τ of the relaxed-Bernoulli routing in training.
    straight_through: hard 0/1 routing (threshold 0.5) in the forward pass,
      the relaxed weights' gradient in the backward pass; also hard at
      evaluation.
    dropout: dropout on the LoRA input x (lora and poly), training only.
    ia3_feedforward: regex (re.fullmatch) of the (IA)^3 targets that scale
      their input instead of their output (PEFT's `feedforward_modules`).
  """

  kind: str = "poly"
  rank: int = 1
  n_tasks: int = 1
  n_skills: int = 8
  n_heads: int = 1
  scaling: Optional[float] = None
  target_modules: str = "attention"
  shared_routing: bool = False
  routing_temperature: float = 1.0
  straight_through: bool = False
  dropout: float = 0.0
  ia3_feedforward: str = r".*/mlp/wo"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind={self.kind!r} is not supported; valid choices: {list(KINDS)}")
    for field in ("rank", "n_tasks", "n_skills", "n_heads"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r} must be a positive integer")
    if self.kind != "poly":
      for field in ("shared_routing", "straight_through"):
        if getattr(self, field):
          raise ValueError(f"{field}=True needs routed adapters (kind='poly'); got "
                           f"kind={self.kind!r}")
    if not self.routing_temperature > 0:
      raise ValueError(f"routing_temperature={self.routing_temperature!r} must be > 0")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")
    if self.scaling is not None and not isinstance(self.scaling, (int, float)):
      raise ValueError(f"scaling={self.scaling!r} must be a number or None (1/rank)")
    if self.target_modules not in TARGET_PRESETS:
      _check_regex("target_modules", self.target_modules,
                   f"; use a regex or a preset: {sorted(TARGET_PRESETS)}")
    _check_regex("ia3_feedforward", self.ia3_feedforward)

  @property
  def scale(self) -> float:
    """The factor on the LoRA product: `scaling`, or 1/rank when unset."""
    return 1.0 / self.rank if self.scaling is None else float(self.scaling)

  @property
  def routed(self) -> bool:
    """Whether the adapters read a routing table Z (task ids matter)."""
    return self.kind == "poly"

  @property
  def target_regex(self) -> str:
    return TARGET_PRESETS.get(self.target_modules, self.target_modules)

  def targets(self, path: str) -> bool:
    """Whether the projection at `path` ('encoder/layers_0/attention/query') is adapted."""
    return _compiled(self.target_regex).fullmatch(path) is not None

  def is_ia3_feedforward(self, path: str) -> bool:
    """Whether an (IA)^3 vector at `path` scales the projection's input (else its output)."""
    return _compiled(self.ia3_feedforward).fullmatch(path) is not None

  def replace(self, **changes) -> "AdapterConfig":
    return dataclasses.replace(self, **changes)
