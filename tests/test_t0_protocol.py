"""The paper's T0 protocol (microsoft/mttl @ mhr-camera-ready) as t0_3b.gin runs it.

Each piece is checked against a hand-computed example or an outside
reference (torch, transformers' Adafactor, numpy's legacy shuffle), and
docs/PROTOCOL.md's T0 table against the operative config of t0_3b.gin.
"""

from __future__ import annotations

import ast
import math
import os
import re

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhr_jax import gin_cli
from mhr_jax.adapters import routing
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.experiment import pipeline  # noqa: F401  (registers the gin configurables)
from mhr_jax.experiment.model_setup import init_params
from mhr_jax.models import T5, T5Config
from mhr_jax.training import losses
from mhr_jax.training.multiple_choice import MultipleChoiceLoss, make_choice_score_step
from mhr_jax.training.optimizer import OptimizerConfig, make_optimizer
from mhr_jax.training.step import model_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
T0_GIN = os.path.join(CONFIGS, "experiments", "t0_3b.gin")


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


# --- Losses: one example by hand --------------------------------------------------------

# One example, two choices: choice 0 (correct) has tokens of probability 0.5 and
# 0.25; choice 1 has one token of probability 0.8 and a pad position.
P = np.array([[[0.5, 0.25], [0.8, 0.3]]])
W = np.array([[[1, 1], [1, 0]]])
LABELS = np.array([0])


def test_multiple_choice_losses_match_a_hand_computed_example():
  ll = jnp.log(jnp.asarray(P))
  mean0, mean1 = (math.log(0.5) + math.log(0.25)) / 2, math.log(0.8)
  scores = losses.choice_log_likelihoods(ll, W, length_normalize=True)
  np.testing.assert_allclose(scores, [[mean0, mean1]], rtol=1e-6)
  np.testing.assert_allclose(losses.choice_log_likelihoods(ll, W, length_normalize=False),
                             [[2 * mean0, mean1]], rtol=1e-6)
  # MC: -log softmax over the choices' mean log-likelihoods, at the label.
  mc = -mean0 + math.log(math.exp(mean0) + math.exp(mean1))
  np.testing.assert_allclose(losses.multiple_choice_loss(scores, LABELS), mc, rtol=1e-6)
  # Unlikelihood: the wrong choice's one real token, -log(1 - 0.8 + 0.01).
  np.testing.assert_allclose(losses.unlikelihood_loss(ll, W, LABELS), -math.log(0.21),
                             rtol=1e-6)
  # LM: mean NLL of the correct choice's tokens.
  lm, n = losses.correct_choice_cross_entropy(ll, W, LABELS)
  np.testing.assert_allclose(lm, -mean0, rtol=1e-6)
  assert float(n) == 2.0


def test_multiple_choice_losses_match_mttls_torch_code():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rng = np.random.default_rng(0)
  bs, nc, t, v = 3, 4, 5, 7
  logits = rng.normal(size=(bs, nc, t, v)).astype(np.float32)
  ids = rng.integers(2, v, size=(bs, nc, t))
  lengths = rng.integers(1, t + 1, size=(bs, nc))
  ids[np.arange(t)[None, None, :] >= lengths[..., None]] = 0  # pad id 0
  labels = rng.integers(0, nc, size=bs)
  # mttl models/t0_encoder_decoder.py training_step, with length_norm = mc = unlikely = 1.
  lg, cid, lab = torch.tensor(logits), torch.tensor(ids), torch.tensor(labels)
  target = cid - 100 * (cid == 0).long()
  ce = F.cross_entropy(lg.flatten(0, 2), target.flatten(), reduction="none").view(bs, nc, t)
  scores = ce.sum(-1) / (cid != 0).sum(-1)
  mc_ref = F.cross_entropy(-scores, lab).item()
  lm_ref = F.cross_entropy(lg[range(bs), lab].flatten(0, 1), target[range(bs), lab].flatten())
  cand = -ce + (target < 0) * -100
  cand[range(bs), lab] = -100
  ul_ref = (-torch.log(1 - torch.exp(cand) + 1e-2).sum() / (cand != -100).sum()).item()
  n_masked = (cand == -100).sum().item()
  ul_ref -= n_masked * -math.log(1.01) / (cand != -100).sum().item()  # mttl's constant

  ll = losses.token_log_likelihoods(jnp.asarray(logits), jnp.asarray(ids))
  w = jnp.asarray(ids) > 0
  ours = losses.multiple_choice_loss(losses.choice_log_likelihoods(ll, w, length_normalize=True),
                                     jnp.asarray(labels))
  np.testing.assert_allclose(ours, mc_ref, rtol=1e-5)
  np.testing.assert_allclose(losses.correct_choice_cross_entropy(ll, w, jnp.asarray(labels))[0],
                             lm_ref.item(), rtol=1e-5)
  np.testing.assert_allclose(losses.unlikelihood_loss(ll, w, jnp.asarray(labels)), ul_ref,
                             rtol=1e-5)


# --- Rank classification: encode once, length-normalised ---------------------------------


def _tiny_model():
  config = T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                    dropout_rate=0.0)
  model = T5(config, adapter=AdapterConfig(kind="poly", rank=1, n_tasks=1, n_skills=2,
                                           n_heads=2, target_modules="all_linear",
                                           relaxed_bernoulli=False))
  params = init_params(model, jax.random.PRNGKey(0))
  # Non-zero skills B so the adapters matter.
  params = jax.tree_util.tree_map_with_path(
      lambda kp, x: x + 0.3 if "skill_lora_b" in jax.tree_util.keystr(kp) else x, params)
  return model, nn.meta.unbox(params)


def test_choice_scores_encode_once_normalise_by_non_pad_tokens_and_train_all_three_losses():
  model, params = _tiny_model()
  enc = np.array([[5, 6, 7, 1, 0, 0], [8, 9, 1, 0, 0, 0]], np.int32)
  choices = np.array([[[3, 4, 1, 0], [5, 1, 0, 0]], [[6, 7, 8, 1], [9, 1, 0, 0]]], np.int32)
  labels = np.array([1, 0], np.int32)
  batch = {"encoder_input_tokens": enc, "choice_tokens": choices, "labels": labels,
           "task_ids": np.zeros(2, np.int32)}
  seen = []

  def spy(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and type(context.module).__name__ == "Encoder":
      seen.append(args[0].shape[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(spy):
    got = jax.jit(make_choice_score_step(model, single_task=True, length_normalize=True))(
        params, batch)
  assert seen == [2]  # the encoder ran once, on the two inputs, not on 4 (input, choice) pairs
  # Reference: each (input, choice) pair through the whole model.
  pair_logits = jax.jit(lambda p, b: model_logits(model, p, b, deterministic=True,
                                                  single_task=True))
  token_ll = np.zeros(choices.shape, np.float32)
  for i in range(2):
    for c in range(2):
      tgt = choices[i, c][None]
      dec = np.concatenate([[[0]], tgt[:, :-1]], axis=1)
      logits = pair_logits(params, {"encoder_input_tokens": enc[i][None],
                                    "decoder_input_tokens": dec,
                                    "task_ids": np.zeros(1, np.int32)})
      token_ll[i, c] = losses.token_log_likelihoods(logits, tgt)[0]
  weights = choices > 0  # EOS (1) counts, padding (0) does not
  np.testing.assert_allclose(got, (token_ll * weights).sum(-1) / weights.sum(-1), rtol=2e-5)
  # The training objective (no dropout, no routing noise here): LM + MC + unlikelihood.
  loss, tokens = jax.jit(lambda p, b: MultipleChoiceLoss(mc_loss=1.0, unlikelihood_loss=1.0)(
      model, p, b, rng=jax.random.PRNGKey(0), single_task=True))(params, batch)
  want = (losses.correct_choice_cross_entropy(token_ll, weights, labels)[0]
          + losses.multiple_choice_loss(got, labels)
          + losses.unlikelihood_loss(token_ll, weights, labels))
  np.testing.assert_allclose(loss, want, rtol=2e-5)
  assert float(tokens) == 2 + 4  # the correct choices' tokens
  with pytest.raises(ValueError, match="mc_loss=-1"):
    MultipleChoiceLoss(mc_loss=-1)


# --- Routing and init ---------------------------------------------------------------------


def test_relaxed_bernoulli_off_routes_by_sigmoid_in_training():
  z = jnp.array([[[0.3, -1.2, 2.0]]])
  router = routing.Router(1, 1, 3, relaxed=False)
  variables = router.init(jax.random.PRNGKey(0), jnp.zeros(1, jnp.int32))
  variables = {"params": {"routing_logits": z}}
  w = router.apply(variables, jnp.zeros(1, jnp.int32), deterministic=False)  # no rng needed
  s = jax.nn.sigmoid(z[0])
  np.testing.assert_allclose(w[0], s / s.sum(-1, keepdims=True), rtol=1e-6)
  sampled = routing.Router(1, 1, 3).apply(variables, jnp.zeros(1, jnp.int32),
                                          deterministic=False,
                                          rngs={"routing": jax.random.PRNGKey(1)})
  assert not np.allclose(sampled, w)
  with pytest.raises(ValueError, match="straight_through=True with relaxed_bernoulli=True"):
    AdapterConfig(straight_through=True)
  with pytest.raises(ValueError, match=r"lora_init='kaiming'.*\['peft', 'mttl'\]"):
    AdapterConfig(lora_init="kaiming")


def test_lora_a_init_bounds():
  from mhr_jax.adapters.inputs import AdapterInputs  # pylint: disable=g-import-not-at-top
  from mhr_jax.adapters.poly import PolyAdapter  # pylint: disable=g-import-not-at-top
  x = jnp.zeros((1, 2, 64))
  inputs = AdapterInputs(task_ids=jnp.zeros(1, jnp.int32))
  # mttl: (1/√3)/√64 with the full width 64; PEFT: 1/√(64/8) on one head block.
  for init, bound in (("mttl", (1 / math.sqrt(3)) / math.sqrt(64)), ("peft", 1 / math.sqrt(8))):
    layer = PolyAdapter(AdapterConfig(kind="poly", rank=1, n_skills=8, n_heads=8,
                                      lora_init=init), 64, 64, ("embed", "mlp"))
    a = nn.meta.unbox(layer.init(jax.random.PRNGKey(0), x, x, inputs))["params"]["skill_lora_a"]
    assert a.shape == (8, 8, 8, 1)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound, init


# --- Adafactor = transformers' Adafactor as mttl configures it ---------------------------


@pytest.mark.parametrize("scale_parameter", [False, True])
def test_adafactor_matches_transformers(scale_parameter):
  torch = pytest.importorskip("torch")
  from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  init = {"enc/q/adapter/skill_lora_a": rng.normal(size=(2, 3, 5, 1)).astype(np.float32),
          "enc/q/adapter/router/routing_logits": rng.normal(size=(1, 2, 3)).astype(np.float32)}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in init.items()}
           for _ in range(3)]
  # mttl: one torch tensor per parameter; its routing logits are [tasks, heads * skills].
  tp = {k: torch.nn.Parameter(torch.tensor(v.reshape(1, 6) if "routing" in k else v))
        for k, v in init.items()}
  opt = Adafactor([{"params": [tp["enc/q/adapter/skill_lora_a"]], "lr": 3e-3},
                   {"params": [tp["enc/q/adapter/router/routing_logits"]], "lr": 0.1}],
                  scale_parameter=scale_parameter, relative_step=False, warmup_init=False)
  tx, _ = make_optimizer(OptimizerConfig(
      name="adafactor", learning_rate=3e-3, routing_learning_rate=0.1, warmup_fraction=0.0,
      schedule="constant", clip_grad_norm=None, adafactor_scale_parameter=scale_parameter,
      adafactor_min_dim_size_to_factor=10**9), 3)
  params = {k: jnp.asarray(v) for k, v in init.items()}
  state = tx.init(params)
  for g in grads:
    for k, p in tp.items():
      p.grad = torch.tensor(g[k].reshape(p.shape))
    opt.step()
    updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
    params = {k: params[k] + updates[k] for k in params}
  for k, p in tp.items():
    np.testing.assert_allclose(np.asarray(params[k]).reshape(p.shape), p.detach().numpy(),
                               rtol=1e-5, atol=1e-7, err_msg=k)


# --- Few-shot draw and aggregation ---------------------------------------------------------


def test_shuffle_draw_is_mttls_seeded_numpy_shuffle():
  from tasks.fewshot import select_fewshot  # pylint: disable=g-import-not-at-top
  records = [{"idx": i, "label": i % 2} for i in range(40)]
  for seed in (42, 1024, 0):
    state = np.random.get_state()
    np.random.seed(seed)  # mttl t0_dataset_readers.py _sample_few_shot_data
    shuffled = list(records)
    np.random.shuffle(shuffled)
    np.random.set_state(state)
    got = select_fewshot(records, 32, seed, sampling="shuffle")
    assert [records[i]["idx"] for i in got] == [r["idx"] for r in shuffled[:32]]


def test_results_report_the_median_over_seeds():
  from mhr_jax.evaluation.results import aggregate, markdown_table  # pylint: disable=g-import-not-at-top
  records = [{"task": t, "seed": s, "accuracy": v}
             for t, vals in (("a", (50.0, 60.0, 90.0)), ("b", (10.0, 20.0, 60.0)))
             for s, v in zip((42, 1024, 0), vals)]
  summary = aggregate(records)
  assert summary["a"]["accuracy"]["median"] == 60.0
  assert summary["average"]["accuracy"]["median"] == 40.0  # mean over tasks of medians
  np.testing.assert_allclose(summary["average"]["accuracy"]["mean"], (200 / 3 + 30) / 2)
  assert "the paper's aggregation): accuracy 40.00" in markdown_table(summary)


# --- Config: heads, baselines, PROTOCOL.md ---------------------------------------------------


@pytest.mark.parametrize("method", ["mhr", "mhr_z", "poly", "shared_lora"])
def test_method_files_keep_the_experiments_heads_in_any_order(method, clean_gin):
  method_file = os.path.join(CONFIGS, "methods", f"{method}.gin")
  for files in ([T0_GIN, method_file], [method_file, T0_GIN]):
    gin.clear_config()
    gin_cli.parse(files, [], [CONFIGS, ROOT])
    assert gin.query_parameter("mhr_jax.AdapterConfig.n_heads") == 64


def _protocol_rows(section: str) -> list[list[str]]:
  with open(os.path.join(ROOT, "docs", "PROTOCOL.md"), encoding="utf-8") as f:
    text = f.read()
  body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
  rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
          for line in body.splitlines() if line.startswith("|")]
  return rows[2:]  # header and separator


def _literal(cell: str):
  return ast.literal_eval(cell.strip("`"))


def test_protocol_table_matches_the_operative_t0_config(clean_gin):
  rows = _protocol_rows("T0")
  assert len(rows) >= 25
  gin_cli.parse([T0_GIN], [], [CONFIGS, ROOT])
  config = gin_cli.config_text()
  checked = 0
  for setting, paper, source, key, ours, followed in rows:
    assert followed in ("yes", "no", "partly"), setting
    assert re.search(r"\S+:\d+", source), f"{setting}: source needs file:line, got {source!r}"
    if key in ("", "-"):
      continue
    key = key.strip("`")
    value = gin.query_parameter(key)
    if isinstance(value, gin.config.ConfigurableReference):
      value = value.selector
    assert value == _literal(ours), f"{setting}: {key} = {value!r}, table says {ours}"
    assert key.split(".")[-1] in config
    if followed == "yes":
      try:
        paper_value = _literal(paper)
      except (ValueError, SyntaxError):
        continue  # described in words
      assert paper_value == value, f"{setting}: followed, but {paper_value!r} != {value!r}"
    checked += 1
  assert checked >= 20
