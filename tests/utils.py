"""Fixtures shared by several test modules (this is not a test module).

    tiny_config(**overrides)        our T5Config with `hf_reference.tiny_hf_t5`'s sizes
    random_params(config, adapter)  every parameter drawn at random (adapters too)
    our_logits(config, adapter, p)  logits of the fixed batch ENC / DEC / TASK_IDS
    mesh_config / mesh_adapter / mesh_batch / loss_and_grad
                                    the one-layer model and batch of the mesh tests
    MICRO                           gin bindings: a micro model and budgets for run.py
    record_evaluations(monkeypatch) each evaluation's metrics recomputed independently
    FAST_COMPILE_XLA_FLAGS          XLA_FLAGS of the tests' own subprocesses

Torch and PEFT are not imported here (see hf_reference.py); task data
stand-ins are in task_fixtures.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mhr_jax import param_tree
from mhr_jax.models import T5, T5Config
from mhr_jax.training.losses import weighted_cross_entropy

# XLA flags of the tests' own subprocesses: compiling, not running, is what the tiny
# models spend their time on. LLVM at -O0, its expensive passes off, and XLA:CPU's
# loop emitters instead of the fusion emitters (a train step compiles ~2x faster);
# scripts/test.sh sets the first and the last for the whole suite. Both sides of
# every comparison compile with them.
FAST_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                          "--xla_llvm_disable_expensive_passes=true "
                          "--xla_cpu_use_fusion_emitters=false")

# --- A tiny T5 and one fixed mixed-task batch ------------------------------------

TOL = 1e-4  # agreement with the torch references (float32)
ENC = np.array([[5, 9, 13, 2, 1, 0, 0], [7, 3, 3, 8, 11, 4, 1], [20, 1, 0, 0, 0, 0, 0],
                [6, 6, 17, 30, 2, 1, 0]], np.int32)
DEC = np.array([[0, 4, 9, 2], [0, 8, 8, 1], [0, 3, 0, 0], [0, 12, 5, 7]], np.int32)
TASK_IDS = np.array([2, 0, 1, 2], np.int32)


def tiny_config(**overrides) -> T5Config:
  """Our T5Config with `tiny_hf_t5`'s sizes (v1.0), so compiled ops are shared across tests."""
  kwargs = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16,
                dropout_rate=0.0)
  kwargs.update(overrides)
  return T5Config(**kwargs)


def random_params(config, adapter, base_params=None, seed=0):
  """Parameters of `T5(config, adapter)`: `base_params` where given, else N(0, σ²) draws.

  Adapter parameters are all random (B and Z too, unlike their init); the
  model is never initialised for real (eval_shape only: fast).
  """
  shapes = jax.eval_shape(lambda: T5(config, adapter=adapter).init(
      {"params": jax.random.PRNGKey(0), "routing": jax.random.PRNGKey(0)}, ENC[:1], DEC[:1],
      task_ids=jnp.zeros((1,), jnp.int32))["params"])
  flat = param_tree.flatten(shapes)
  base = param_tree.flatten(base_params or {})
  rng = np.random.default_rng(seed)
  std = {"skill_lora_a": 0.3, "skill_lora_b": 1.0, "routing_logits": 2.0, "lora_a": 0.3,
         "lora_b": 1.0, "scale": 0.1, "embedding": 1.0, "rel_embedding": 0.5}
  for k, v in flat.items():
    leaf = k.rsplit("/", 1)[-1]
    if k in base:
      flat[k] = base[k]
    elif leaf in ("scale", "ia3_scale"):
      flat[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    else:  # kernels ~ N(0, 1/fan_in)
      sd = std.get(leaf, v.shape[-2] ** -0.5 if len(v.shape) >= 2 else 1.0)
      flat[k] = rng.normal(0.0, sd, v.shape).astype(np.float32)
  return param_tree.unflatten(flat)


def our_logits(config, adapter, params, task_ids=TASK_IDS, single_task=False):
  return np.asarray(T5(config, adapter=adapter).apply(
      {"params": params}, ENC, DEC, task_ids=jnp.asarray(task_ids), deterministic=True,
      single_task=single_task))


# --- The mesh tests' model (test_partitioning.py, test_multiprocess.py) ----------


def mesh_config(variant: str) -> T5Config:
  """'v1_0': tied head, ReLU; 'v1_1': untied head, gated GELU.

  One unrolled layer: XLA's CPU compile time, not the run, dominates these
  tests, and a scanned stack compiles slower (the 'layers' axis is covered
  by `check_rules`).
  """
  common = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16,
                dropout_rate=0.0)
  if variant == "v1_0":
    return T5Config(**common)
  if variant == "v1_1":
    return T5Config(**common, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    scale_decoder_outputs=False)
  raise ValueError(f"variant={variant!r}; valid choices: ['v1_0', 'v1_1']")


def mesh_adapter(kind: str):
  if kind == "none":
    return None
  from mhr_jax.adapters.config import AdapterConfig  # pylint: disable=g-import-not-at-top
  # MHR: 2 routing heads (not divisible by model=4 if it were sharded), 3 tasks.
  return AdapterConfig(kind=kind, n_heads=2, n_tasks=3, n_skills=4, rank=2,
                       target_modules="qv")


def mesh_batch(batch_size: int = 8, enc_len: int = 6, dec_len: int = 5,
               vocab: int = 64) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  enc = rng.integers(1, vocab, (batch_size, enc_len)).astype(np.int32)
  enc[:, -2:] = 0  # padding
  targets = rng.integers(1, vocab, (batch_size, dec_len)).astype(np.int32)
  dec = np.concatenate([np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1)
  weights = np.ones((batch_size, dec_len), np.int32)
  weights[::2, -1] = 0
  return dict(encoder_input_tokens=enc, decoder_input_tokens=dec,
              decoder_target_tokens=targets, decoder_loss_weights=weights,
              task_ids=(np.arange(batch_size) % 3).astype(np.int32))


def loss_and_grad(model):
  """(params, batch) -> (mean token cross-entropy, its gradient), evaluation mode."""
  def loss(params, batch):
    logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                         batch["decoder_input_tokens"], task_ids=batch["task_ids"],
                         deterministic=True)
    return weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"])[0]
  return jax.value_and_grad(loss)


# --- run.py with a micro model -----------------------------------------------------

# A micro model and tiny budgets so each method's pipeline runs in seconds.
MICRO = [
    "mhr_jax.T5Config.d_model = 16", "mhr_jax.T5Config.d_kv = 4", "mhr_jax.T5Config.d_ff = 32",
    "mhr_jax.T5Config.num_heads = 2", "mhr_jax.T5Config.num_layers = 1",
    "mhr_jax.T5Config.num_decoder_layers = 1", "mhr_jax.AdapterConfig.n_skills = 2",
    "mhr_jax.AdapterConfig.rank = 2",
    "mhr_jax.DataConfig.batch_size = 4", "mhr_jax.DataConfig.eval_batch_size = 4",
    "train_multitask.steps = 3", "train_multitask.checkpoint_every = 2",
    "train_multitask.log_every = 1", "train_multitask.show_progress = False",
    "adapt_heldout.steps = 2", "adapt_heldout.seeds = (0, 1)", "adapt_heldout.log_every = 1",
    "adapt_heldout.tasks = ['synthetic_up_def_then_up_mno_then_up_pqr']",
    "adapt_heldout.max_eval_examples = 4", "adapt_heldout.show_progress = False",
    "mu_zero_shot.steps = 2", "mu_zero_shot.log_every = 1", "mu_zero_shot.show_progress = False",
    "mu_zero_shot.tasks = ['synthetic_up_def_then_up_mno_then_up_pqr']",
    "mu_zero_shot.max_eval_examples = 4", "evaluate_checkpoint.max_eval_examples = 2",
]


def record_evaluations(monkeypatch) -> list[dict[str, float]]:
  """A list that receives, per generation or multiple-choice evaluation, its metrics
  recomputed from the predictions (or choice scores) the evaluator made: exact
  match by string comparison (after the SNI normalisation when the config asks
  for it), Rouge-L by `rouge_score` with the Porter stemmer, accuracy by argmax.
  The references scored are the configured ones (`generation_metrics.reference`).
  """
  import string  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  from mhr_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from tasks import metrics  # pylint: disable=g-import-not-at-top
  recorded = []
  generate, score_choices = evaluator.generate_predictions, evaluator.choice_scores
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

  def recording_generate(decode, vocab, examples, *args, **kwargs):
    preds = generate(decode, vocab, examples, *args, **kwargs)
    bound = gin.get_bindings("mhr_jax.generation_metrics")
    refs = metrics.scored_references([ex["targets"] for ex in examples],
                                     bound.get("reference", "max"), bound.get("seed", 0))
    if bound.get("normalize", False):
      norm = lambda t: " ".join("".join(c for c in t.lower()
                                        if c not in string.punctuation).split())
    else:
      norm = str.strip
    recorded.append({
        "exact_match": 100 * np.mean([any(norm(p) == norm(t) for t in ts)
                                      for ts, p in zip(refs, preds)]),
        "rouge_l": 100 * np.mean([max(scorer.score(t, p)["rougeL"].fmeasure for t in ts)
                                  for ts, p in zip(refs, preds)])})
    return preds

  def recording_choice_scores(score_fn, vocab, examples, *args, **kwargs):
    scores = score_choices(score_fn, vocab, examples, *args, **kwargs)
    recorded.append({"accuracy": 100 * np.mean([int(np.argmax(s)) == ex["label"]
                                                for s, ex in zip(scores, examples)])})
    return scores

  monkeypatch.setattr(evaluator, "generate_predictions", recording_generate)
  monkeypatch.setattr(evaluator, "choice_scores", recording_choice_scores)
  return recorded


def padded_encoder_inputs() -> np.ndarray:
  """[6, 9] int32 encoder tokens in [2, 96) (no EOS), rows 0 and 1 right-padded with 0."""
  rng = np.random.default_rng(0)
  enc = rng.integers(2, 96, (6, 9)).astype(np.int32)
  enc[0, 5:] = 0
  enc[1, 3:] = 0
  return enc
