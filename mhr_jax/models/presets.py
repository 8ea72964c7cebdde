"""Named T5 sizes: the architecture of a checkpoint without its weights.

Used where only shapes matter (the `compile` stage). T5 v1.1 shapes (gated
GELU, untied output head, vocabulary 32128), which T0 and Flan-T5 share:

  name        d_model  heads x d_kv  d_ff   layers (enc+dec)  parameters
  t5-small        512      6 x 64    1024    8 + 8             77 M
  t5-base         768     12 x 64    2048   12 + 12           248 M
  t5-large       1024     16 x 64    2816   24 + 24           783 M
  t5-xl          2048     32 x 64    5120   24 + 24           2.85 B
  t5-xxl         4096     64 x 64   10240   24 + 24           11.1 B
  t0 / t0_3b   = t5-xl  (bigscience/T0_3B)
  t0pp / t0pp_11b = t5-xxl (bigscience/T0pp)

(the Hugging Face config.json files of google/t5-v1_1-* and bigscience/T0*).
"""

from __future__ import annotations

import os
from typing import Any

from mhr_jax.models.t5_config import T5Config

_V1_1 = dict(vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
             scale_decoder_outputs=False, relative_attention_num_buckets=32,
             relative_attention_max_distance=128)

SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "t5-small": dict(d_model=512, num_heads=6, d_kv=64, d_ff=1024, num_layers=8, **_V1_1),
    "t5-base": dict(d_model=768, num_heads=12, d_kv=64, d_ff=2048, num_layers=12, **_V1_1),
    "t5-large": dict(d_model=1024, num_heads=16, d_kv=64, d_ff=2816, num_layers=24, **_V1_1),
    "t5-xl": dict(d_model=2048, num_heads=32, d_kv=64, d_ff=5120, num_layers=24, **_V1_1),
    "t5-xxl": dict(d_model=4096, num_heads=64, d_kv=64, d_ff=10240, num_layers=24, **_V1_1),
}
SIZE_PRESETS.update({"t0": SIZE_PRESETS["t5-xl"], "t0_3b": SIZE_PRESETS["t5-xl"],
                     "t0pp": SIZE_PRESETS["t5-xxl"], "t0pp_11b": SIZE_PRESETS["t5-xxl"]})


def preset_config(name_or_path: str, **overrides) -> T5Config:
  """A `T5Config` from a preset name (`SIZE_PRESETS`) or a HF `config.json` (file or dir).

  `overrides` set the numerics (dtype, param_dtype, scan_layers, remat, ...).
  """
  if name_or_path in SIZE_PRESETS:
    return T5Config(**{**SIZE_PRESETS[name_or_path], **overrides})
  if os.path.exists(name_or_path):
    return T5Config.from_hf_json(name_or_path, **overrides)
  raise ValueError(f"model size {name_or_path!r} is neither a preset nor an existing "
                   f"config.json; valid presets: {sorted(SIZE_PRESETS)}")
