"""Tiny PyTorch Hugging Face T5 models: the outside reference our Flax T5 is pinned to.

Import from a test as `from tests.hf_reference import tiny_hf_t5, ...`
(the repository root is on sys.path under `python -m pytest`).

    model = tiny_hf_t5("v1.1", num_layers=2, num_decoder_layers=3, seed=0)
    save_tiny_hf_t5(model, directory)                    # a HF checkpoint dir
    logits = hf_logits(model, encoder_ids, decoder_ids)  # numpy [b, t, v]
    hf, config, params = hf_base("v1.0")                 # + our T5Config and params for it
    peft_logits(peft_model)                              # on tests/utils.py's ENC / DEC

Families:
  'v1.0': ReLU MLP, lm_head tied to the embedding, decoder output scaled by
          d_model**-0.5 (transformers' `scale_decoder_outputs=True`).
  'v1.1': gated-GELU (tanh) MLP, an independent lm_head, no output scaling.

Every weight is re-drawn from a seeded numpy generator (HF's own init leaves
layer norms at exactly 1, which would hide a wrong norm mapping): kernels
~ N(0, 1/fan_in) so attention logits are O(1) and both the content and the
relative-position terms matter, relative-position tables ~ N(0, 0.5^2),
norm scales ~ U(0.5, 1.5), embedding ~ N(0, 1) by default and lm_head
~ N(0, 1/d_model) (v1.1 logits then have v1.0's scale).

Everything here runs on CPU in float32, eager attention, eval mode.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
import transformers

from mhr_jax.checkpoints.hf import hf_state_dict_to_params
from mhr_jax.models import T5Config
from tests.utils import DEC, ENC, TASK_IDS

FAMILIES = ("v1.0", "v1.1")
EOS_ID = 1


def tiny_hf_t5(family: str = "v1.1", num_layers: int = 2,
               num_decoder_layers: Optional[int] = None, seed: int = 0, *,
               vocab_size: int = 96, d_model: int = 32, d_kv: int = 8, d_ff: int = 48,
               num_heads: int = 4, relative_attention_num_buckets: int = 8,
               relative_attention_max_distance: int = 16, relpos_std: float = 0.5,
               embedding_std: float = 1.0, eos_logit_scale: float = 1.0) -> transformers.T5ForConditionalGeneration:
  """A randomly initialised `T5ForConditionalGeneration` in eval mode (float32, CPU).

  Args:
    family: 'v1.0' (relu, tied, scaled) or 'v1.1' (gated-gelu, untied lm_head).
    num_layers / num_decoder_layers: encoder / decoder depth (decoder defaults
      to the encoder's).
    seed: seeds every weight.
    relpos_std / embedding_std: spread of the position tables / the embedding
      (and lm_head). A small embedding keeps a tied random model from simply
      repeating its last token (its input embedding would dominate the
      residual stream and hence its own logit), which generation tests need.
    eos_logit_scale: multiplies the EOS (id 1) row of the output projection
      (the embedding when tied, lm_head otherwise) to make EOS rarer (< 1) in
      generation tests; 1.0 leaves the weights as drawn.
  """
  if family not in FAMILIES:
    raise ValueError(f"family={family!r}; valid choices: {list(FAMILIES)}")
  v11 = family == "v1.1"
  config = transformers.T5Config(
      vocab_size=vocab_size, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=num_layers,
      num_decoder_layers=num_decoder_layers, num_heads=num_heads,
      relative_attention_num_buckets=relative_attention_num_buckets,
      relative_attention_max_distance=relative_attention_max_distance, dropout_rate=0.0,
      feed_forward_proj="gated-gelu" if v11 else "relu",
      # transformers 5 still ties at construction; False only turns off the scaling.
      tie_word_embeddings=not v11, decoder_start_token_id=0, pad_token_id=0,
      eos_token_id=EOS_ID, attn_implementation="eager")
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(config)
  if v11:
    model.lm_head.weight = torch.nn.Parameter(torch.empty(vocab_size, d_model))
    assert model.lm_head.weight is not model.shared.weight
  rng = np.random.default_rng(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():  # tied aliases are listed once
      if name.endswith("layer_norm.weight"):
        value = rng.uniform(0.5, 1.5, p.shape)
      elif name.endswith("relative_attention_bias.weight"):
        value = rng.normal(0.0, relpos_std, p.shape)
      elif name == "shared.weight":
        value = rng.normal(0.0, embedding_std, p.shape)
      elif name == "lm_head.weight":  # logits as large as v1.0's scaled tied head
        value = rng.normal(0.0, embedding_std * d_model ** -0.5, p.shape)
      else:  # nn.Linear weight [out, in]
        value = rng.normal(0.0, p.shape[1] ** -0.5, p.shape)
      p.copy_(torch.from_numpy(value.astype(np.float32)))
    head = model.shared.weight if not v11 else model.lm_head.weight
    head[EOS_ID] *= eos_logit_scale
  assert model.config.scale_decoder_outputs == (not v11)
  return model.eval()


def save_tiny_hf_t5(model: transformers.T5ForConditionalGeneration, directory: str,
                    fmt: str = "safetensors", max_shard_size: Optional[str] = None) -> str:
  """Writes `model` as a HF checkpoint dir and returns `directory`.

  fmt: 'safetensors' (transformers' `save_pretrained`; `max_shard_size` such
  as '20KB' gives sharded files + `model.safetensors.index.json`) or 'bin'
  (config.json + a `pytorch_model.bin` holding the full state dict, as older
  checkpoints on the Hub do, including the tied `embed_tokens` copies).
  """
  os.makedirs(directory, exist_ok=True)
  if fmt == "safetensors":
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
  elif fmt == "bin":
    model.config.save_pretrained(directory)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(directory, "pytorch_model.bin"))
  else:
    raise ValueError(f"fmt={fmt!r}; valid choices: ['safetensors', 'bin']")
  return directory


def numpy_state_dict(model: transformers.T5ForConditionalGeneration) -> dict[str, np.ndarray]:
  """`model.state_dict()` as float32 numpy arrays (tied aliases included)."""
  return {k: v.detach().cpu().float().numpy().copy() for k, v in model.state_dict().items()}


def _ids(x) -> torch.Tensor:
  return torch.as_tensor(np.asarray(x), dtype=torch.long)


def hf_logits(model, encoder_ids, decoder_ids) -> np.ndarray:
  """Teacher-forced logits [b, t, v] (numpy float32); encoder padding (id 0) is masked.

  `use_cache=False`: transformers 5's cache breaks when the decoder is deeper
  than the encoder, and a single forward pass does not need it.
  """
  enc = _ids(encoder_ids)
  with torch.no_grad():
    out = model(input_ids=enc, attention_mask=(enc != 0).long(),
                decoder_input_ids=_ids(decoder_ids), use_cache=False)
  return out.logits.float().numpy()


def hf_encoder_outputs(model, encoder_ids) -> np.ndarray:
  """Final encoder hidden states [b, i, e] (after the final norm), numpy float32."""
  enc = _ids(encoder_ids)
  with torch.no_grad():
    out = model.encoder(input_ids=enc, attention_mask=(enc != 0).long())
  return out.last_hidden_state.float().numpy()


def hf_greedy_generate(model, encoder_ids, max_new_tokens: int) -> np.ndarray:
  """HF greedy `generate()` tokens [b, max_new_tokens] without the start token.

  Rows that emitted EOS are padded with 0 after it, and the result is
  right-padded with 0 to `max_new_tokens` (HF stops early once every row is
  done) -- the layout of `mhr_jax.models.decoding.greedy_decode`.
  """
  enc = _ids(encoder_ids)
  with torch.no_grad():
    out = model.generate(enc, attention_mask=(enc != 0).long(), do_sample=False, num_beams=1,
                         max_new_tokens=max_new_tokens, min_new_tokens=0,
                         decoder_start_token_id=0, eos_token_id=EOS_ID, pad_token_id=0,
                         use_cache=model.config.num_decoder_layers <= model.config.num_layers)
  tokens = out[:, 1:].numpy()
  return np.pad(tokens, ((0, 0), (0, max_new_tokens - tokens.shape[1])))


def hf_beam_generate(model, encoder_ids, max_new_tokens: int, num_beams: int,
                     length_penalty: float) -> np.ndarray:
  """HF `generate(num_beams, length_penalty, early_stopping=False)` tokens [b, max_new_tokens].

  Same layout as `hf_greedy_generate`: no start token, EOS kept, 0 after it
  (transformers fills the positions after a hypothesis' EOS with EOS), right
  padded with 0.
  """
  enc = _ids(encoder_ids)
  with torch.no_grad():
    out = model.generate(enc, attention_mask=(enc != 0).long(), do_sample=False,
                         num_beams=num_beams, length_penalty=length_penalty,
                         early_stopping=False, max_new_tokens=max_new_tokens, min_new_tokens=0,
                         decoder_start_token_id=0, eos_token_id=EOS_ID, pad_token_id=0,
                         use_cache=model.config.num_decoder_layers <= model.config.num_layers)
  tokens = np.pad(out[:, 1:].numpy(), ((0, 0), (0, max_new_tokens - out.shape[1] + 1)))
  for row in tokens:
    eos = np.flatnonzero(row == EOS_ID)
    if eos.size:
      row[eos[0] + 1:] = 0
  return tokens


# --- Our T5 on the same weights, and PEFT models on the fixed batch of tests/utils.py ---


def hf_base(family, seed=0, num_decoder_layers=None, scan_layers=False):
  """(tiny HF T5, our T5Config for it, its weights as our params)."""
  hf = tiny_hf_t5(family, num_layers=2, num_decoder_layers=num_decoder_layers, seed=seed)
  config = T5Config.from_hf_dict(hf.config.to_dict(), tie_word_embeddings=family == "v1.0",
                                 dropout_rate=0.0, scan_layers=scan_layers)
  return hf, config, hf_state_dict_to_params(numpy_state_dict(hf), config)


def peft_logits(peft_model, task_ids=TASK_IDS):
  enc = torch.as_tensor(ENC, dtype=torch.long)
  with torch.no_grad():
    out = peft_model(input_ids=enc, attention_mask=(enc != 0).long(),
                     decoder_input_ids=torch.as_tensor(DEC, dtype=torch.long),
                     task_ids=torch.as_tensor(task_ids, dtype=torch.long), use_cache=False)
  return out.logits.numpy()

