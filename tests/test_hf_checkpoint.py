"""HF checkpoint dirs <-> our parameter tree: round trips, formats, errors, tokenizer."""

import glob
import importlib.util
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mhr_jax.checkpoints import hf
from mhr_jax.checkpoints.tokenizer import load_tokenizer
from mhr_jax.models import T5, T5Config
from tests import hf_reference

FAMILIES = {"v1.0": dict(family="v1.0", num_layers=2, num_decoder_layers=1, seed=3),
            "v1.1": dict(family="v1.1", num_layers=1, num_decoder_layers=2, seed=4)}


def _inputs():
  rng = np.random.default_rng(5)
  enc = rng.integers(2, 96, (2, 7)).astype(np.int32)
  enc[1, 4:] = 0
  dec = rng.integers(2, 96, (2, 5)).astype(np.int32)
  dec[:, 0] = 0
  return enc, dec


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree)


def _assert_trees_equal(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg="/".join(k))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def hf_dir(request, tmp_path_factory):
  model = hf_reference.tiny_hf_t5(**FAMILIES[request.param])
  directory = str(tmp_path_factory.mktemp(f"hf-{request.param}"))
  hf_reference.save_tiny_hf_t5(model, directory)
  return dict(family=request.param, model=model, dir=directory)


def test_load_decides_tie_and_scaling_from_the_files(hf_dir):
  config, params = hf.load_hf_checkpoint(hf_dir["dir"])
  v11 = hf_dir["family"] == "v1.1"
  hf_config = hf_dir["model"].config
  assert config.tie_word_embeddings == (not v11)
  assert config.scale_decoder_outputs == (not v11)
  assert config.is_gated == v11
  assert (config.num_layers, config.num_decoder_layers, config.vocab_size) == (
      hf_config.num_layers, hf_config.num_decoder_layers, hf_config.vocab_size)
  assert ("logits_dense" in params) == v11
  # Same tree as the in-memory mapping that test_t5_parity.py pins against HF logits.
  _assert_trees_equal(params, hf.hf_state_dict_to_params(
      hf_reference.numpy_state_dict(hf_dir["model"]), config))


def test_config_written_before_transformers_5(hf_dir, tmp_path):
  """Older config.json files carry only `tie_word_embeddings`, which then also means scaling."""
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  for name in os.listdir(hf_dir["dir"]):
    (legacy / name).write_bytes(open(os.path.join(hf_dir["dir"], name), "rb").read())
  hf_config = json.loads((legacy / hf.CONFIG_NAME).read_text())
  v11 = hf_dir["family"] == "v1.1"
  del hf_config["scale_decoder_outputs"]
  hf_config["tie_word_embeddings"] = not v11
  (legacy / hf.CONFIG_NAME).write_text(json.dumps(hf_config))
  config, _ = hf.load_hf_checkpoint(str(legacy))
  assert (config.tie_word_embeddings, config.scale_decoder_outputs) == (not v11, not v11)


def test_round_trip_load_export_reload_is_identical(hf_dir, tmp_path):
  config, params = hf.load_hf_checkpoint(hf_dir["dir"])
  out = hf.save_hf_checkpoint(params, config, str(tmp_path / "export"))
  config2, params2 = hf.load_hf_checkpoint(out)
  assert config2 == config
  _assert_trees_equal(params, params2)
  # The exported tensors are exactly what transformers itself saved.
  original, exported = hf.read_hf_state_dict(hf_dir["dir"]), hf.read_hf_state_dict(out)
  assert sorted(original) == sorted(exported)
  for k in original:
    np.testing.assert_array_equal(original[k], exported[k], err_msg=k)
  assert ("lm_head.weight" in exported) == (hf_dir["family"] == "v1.1")
  # Nothing but the checkpoint was left behind (no temporary dirs).
  assert sorted(os.listdir(tmp_path)) == ["export"]


def test_exported_dir_loads_in_transformers_with_same_logits(hf_dir, tmp_path):
  config, params = hf.load_hf_checkpoint(hf_dir["dir"])
  out = hf.save_hf_checkpoint(params, config, str(tmp_path / "export"))
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
      out, attn_implementation="eager").eval()
  v11 = hf_dir["family"] == "v1.1"
  assert (reloaded.lm_head.weight is reloaded.shared.weight) == (not v11)
  assert reloaded.config.scale_decoder_outputs == (not v11)
  original = hf_reference.numpy_state_dict(hf_dir["model"])
  reloaded_state = hf_reference.numpy_state_dict(reloaded)
  assert sorted(reloaded_state) == sorted(original)
  for k in original:
    np.testing.assert_array_equal(reloaded_state[k], original[k], err_msg=k)
  enc, dec = _inputs()
  np.testing.assert_array_equal(hf_reference.hf_logits(reloaded, enc, dec),
                                hf_reference.hf_logits(hf_dir["model"], enc, dec))


def test_sharded_safetensors_and_pytorch_bin_load_the_same(hf_dir, tmp_path):
  _, expected = hf.load_hf_checkpoint(hf_dir["dir"])
  sharded = hf_reference.save_tiny_hf_t5(hf_dir["model"], str(tmp_path / "sharded"),
                                         max_shard_size="20KB")
  assert os.path.exists(os.path.join(sharded, hf.SAFETENSORS_INDEX_NAME))
  assert len(glob.glob(os.path.join(sharded, "model-*.safetensors"))) > 1
  _assert_trees_equal(hf.load_hf_checkpoint(sharded)[1], expected)
  # A full torch state dict: tied embed_tokens copies, and (v1.0) a tied lm_head copy.
  binary = hf_reference.save_tiny_hf_t5(hf_dir["model"], str(tmp_path / "bin"), fmt="bin")
  assert "encoder.embed_tokens.weight" in torch.load(
      os.path.join(binary, hf.TORCH_NAME), weights_only=True)
  config, params = hf.load_hf_checkpoint(binary)
  assert config.tie_word_embeddings == (hf_dir["family"] == "v1.0")
  _assert_trees_equal(params, expected)


def test_scan_layers_and_dtype_overrides(hf_dir):
  _, unrolled = hf.load_hf_checkpoint(hf_dir["dir"])
  config, scanned = hf.load_hf_checkpoint(hf_dir["dir"], scan_layers=True,
                                          param_dtype="bfloat16")
  assert config.scan_layers and config.param_dtype == "bfloat16"
  q = scanned["decoder"]["layers"]["self_attention"]["query"]["kernel"]
  assert q.dtype == jnp.bfloat16
  assert q.shape == (config.num_decoder_layers, config.d_model, config.num_heads * config.d_kv)
  for i in range(config.num_decoder_layers):
    np.testing.assert_array_equal(
        q[i], unrolled["decoder"][f"layers_{i}"]["self_attention"]["query"]["kernel"].astype(
            jnp.bfloat16))
  # Inverse: scanned bf16 params export to the same tensors (rounded to bf16).
  state = hf.params_to_hf_state_dict(scanned, config)
  original = hf.read_hf_state_dict(hf_dir["dir"])
  assert sorted(state) == sorted(original)
  for k in original:
    np.testing.assert_array_equal(state[k], original[k].astype(jnp.bfloat16), err_msg=k)


@pytest.mark.parametrize("scan", [False, True])
def test_loaded_tree_is_the_unboxed_init_tree(hf_dir, scan):
  config, params = hf.load_hf_checkpoint(hf_dir["dir"], scan_layers=scan)
  model = T5(config)
  enc, dec = _inputs()
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), enc, dec)["params"]
  assert all(isinstance(x, flax.linen.Partitioned) for x in jax.tree_util.tree_leaves(
      boxed, is_leaf=lambda x: isinstance(x, flax.linen.Partitioned)))
  plain = flax.linen.meta.unbox(boxed)
  assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(params)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(plain),
                          jax.tree_util.tree_leaves(params)):
    assert a.shape == b.shape and a.dtype == b.dtype, path
  # Boxed trees (as model.init returns them) export as their plain values.
  is_box = lambda x: isinstance(x, flax.linen.Partitioned)
  reboxed = jax.tree_util.tree_map(lambda box, x: box.replace_boxed(x), boxed, params,
                                   is_leaf=is_box)
  assert is_box(jax.tree_util.tree_leaves(reboxed, is_leaf=is_box)[0])
  state = hf.params_to_hf_state_dict({"params": reboxed}, config)
  _assert_trees_equal(hf.hf_state_dict_to_params(state, config), params)


def test_mismatched_checkpoint_lists_every_problem(hf_dir, tmp_path):
  from safetensors.numpy import save_file
  state = hf.read_hf_state_dict(hf_dir["dir"])
  del state["encoder.block.0.layer.0.SelfAttention.k.weight"]
  del state["decoder.final_layer_norm.weight"]
  state["encoder.block.7.layer.0.SelfAttention.q.weight"] = np.zeros((4, 4), np.float32)
  state["decoder.block.0.layer.2.DenseReluDense.wo.weight"] = np.zeros((32, 7), np.float32)
  bad = tmp_path / "bad"
  bad.mkdir()
  save_file(state, str(bad / hf.SAFETENSORS_NAME), metadata={"format": "pt"})
  (bad / hf.CONFIG_NAME).write_text(open(os.path.join(hf_dir["dir"], hf.CONFIG_NAME)).read())
  with pytest.raises(hf.CheckpointMismatchError) as info:
    hf.load_hf_checkpoint(str(bad))
  err = info.value
  assert isinstance(err, ValueError)
  assert err.missing == ["decoder.final_layer_norm.weight",
                         "encoder.block.0.layer.0.SelfAttention.k.weight"]
  assert err.unexpected == ["encoder.block.7.layer.0.SelfAttention.q.weight"]
  assert err.shape_mismatches == {
      "decoder.block.0.layer.2.DenseReluDense.wo.weight": ((32, 48), (32, 7))}
  message = str(err)
  for name in ("decoder.final_layer_norm.weight", "SelfAttention.k.weight",
               "encoder.block.7.layer.0.SelfAttention.q.weight",
               "expected (32, 48), found (32, 7)", repr(str(bad))):
    assert name in message, message


def test_untied_head_under_a_tied_config_is_reported():
  model = hf_reference.tiny_hf_t5(**FAMILIES["v1.1"])
  config = T5Config.from_hf_dict(model.config.to_dict(), tie_word_embeddings=True)
  with pytest.raises(hf.CheckpointMismatchError, match="lm_head.weight differs"):
    hf.hf_state_dict_to_params(hf_reference.numpy_state_dict(model), config)


def test_missing_directory_and_missing_weights_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist.*nothing is downloaded"):
    hf.load_hf_checkpoint("google/flan-t5-small")
  (tmp_path / hf.CONFIG_NAME).write_text(json.dumps(T5Config().to_hf_dict()))
  with pytest.raises(FileNotFoundError, match="no weights"):
    hf.load_hf_checkpoint(str(tmp_path))


def test_save_refuses_to_clobber_and_writes_nothing_on_error(hf_dir, tmp_path):
  config, params = hf.load_hf_checkpoint(hf_dir["dir"])
  target = str(tmp_path / "ckpt")
  hf.save_hf_checkpoint(params, config, target)
  with pytest.raises(FileExistsError):
    hf.save_hf_checkpoint(params, config, target)
  # overwrite=True replaces the whole directory.
  (tmp_path / "ckpt" / "stale.txt").write_text("x")
  hf.save_hf_checkpoint(params, config, target, overwrite=True)
  assert not os.path.exists(os.path.join(target, "stale.txt"))
  # A tree that does not fit the config fails before anything is written.
  wrong = config.replace(d_ff=config.d_ff + 1)
  with pytest.raises(hf.CheckpointMismatchError):
    hf.save_hf_checkpoint(params, wrong, str(tmp_path / "never"))
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]
  # Adapter (unknown) leaves are refused unless strict=False drops them.
  extra = {**params, "encoder": {**params["encoder"], "extra": {"lora_a": np.zeros(3)}}}
  with pytest.raises(hf.CheckpointMismatchError, match="encoder/extra/lora_a"):
    hf.params_to_hf_state_dict(extra, config)
  assert sorted(hf.params_to_hf_state_dict(extra, config, strict=False)) == sorted(
      hf.params_to_hf_state_dict(params, config))


def test_tokenizer_round_trip(tmp_path):
  # seqio's wheel ships a tiny SentencePiece model (found without importing seqio).
  seqio_dir = importlib.util.find_spec("seqio").submodule_search_locations[0]
  vocab_file = os.path.join(seqio_dir, "test_data", "sentencepiece", "sentencepiece.model")
  original = transformers.T5Tokenizer(vocab_file=vocab_file)
  original.save_pretrained(str(tmp_path / "tok"))
  tokenizer = load_tokenizer(str(tmp_path / "tok"))
  assert type(tokenizer) is type(original) and len(tokenizer) == len(original)
  assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 0)
  # (transformers 5 converts this tiny model lossily -- most pieces come out as
  # <unk> -- so compare with the tokenizer that was saved, not with the text.)
  for text in ("this is a test", "a test: mew <extra_id_0>"):
    assert tokenizer(text).input_ids == original(text).input_ids
  assert tokenizer("a <extra_id_0>").input_ids[-2] == tokenizer.convert_tokens_to_ids(
      "<extra_id_0>") == len(tokenizer) - 1
  with pytest.raises(FileNotFoundError, match="no tokenizer"):
    load_tokenizer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_tokenizer(str(tmp_path / "nope"))
