"""Parameter roles: declared once by the modules that create them; undeclared leaves raise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mhr_jax import param_tree
from mhr_jax.adapters import methods
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.models import T5
from mhr_jax.param_tree import Role
from tests.utils import DEC, ENC, tiny_config

EXPECTED = {"kernel": Role.BACKBONE, "scale": Role.BACKBONE, "rel_embedding": Role.BACKBONE,
            "embedding": Role.BACKBONE, "lora_a": Role.LORA, "lora_b": Role.LORA,
            "skill_lora_a": Role.SKILLS, "skill_lora_b": Role.SKILLS, "ia3_scale": Role.IA3,
            "routing_logits": Role.ROUTING}


@pytest.mark.parametrize("adapter", [
    AdapterConfig(kind="lora"), AdapterConfig(kind="ia3", target_modules="ia3"),
    AdapterConfig(kind="poly", n_heads=2, target_modules="all_linear"),
    AdapterConfig(kind="poly", shared_routing=True)], ids=["lora", "ia3", "mhr", "shared"])
def test_every_leaf_of_the_model_has_its_role(adapter):
  config = tiny_config(num_layers=1, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                       scan_layers=adapter.shared_routing)
  shapes = jax.eval_shape(lambda: T5(config, adapter=adapter).init(
      {"params": jax.random.PRNGKey(0), "routing": jax.random.PRNGKey(0)}, ENC[:1], DEC[:1],
      task_ids=jnp.zeros((1,), jnp.int32))["params"])
  flat = param_tree.flatten(shapes)
  roles = {path.rsplit("/", 1)[-1]: param_tree.role_of(path) for path in flat}
  assert roles == {leaf: role for leaf, role in EXPECTED.items() if leaf in roles}
  assert {r for r in roles.values() if r is not Role.BACKBONE} == (
      {Role.LORA} if adapter.kind == "lora" else {Role.IA3} if adapter.kind == "ia3"
      else {Role.SKILLS, Role.ROUTING})
  # Stripping the adapters leaves the backbone: what a plain T5 holds.
  plain = param_tree.flatten(jax.eval_shape(lambda: T5(config).init(
      jax.random.PRNGKey(0), ENC[:1], DEC[:1])["params"]))
  assert set(param_tree.flatten(methods.strip_adapters(shapes))) == set(plain)


def test_an_undeclared_leaf_is_an_error_not_the_backbone():
  with pytest.raises(ValueError, match=r"'encoder/mlp/wo/bias' has an undeclared leaf name "
                                       r"'bias'; declared names: \['embedding', 'ia3_scale'"):
    param_tree.role_of("encoder/mlp/wo/bias")
  with pytest.raises(ValueError, match="undeclared leaf name 'bias'"):
    methods.trainable_predicate("full")("encoder/mlp/wo/bias")


def test_a_leaf_name_has_one_owner():
  with pytest.raises(ValueError, match=r"'lora_a' is declared by "
                                       r"mhr_jax.adapters.lora.LoraAdapter and again by"):
    @param_tree.declare_roles(lora_a=Role.LORA)
    class AnotherLora:  # pylint: disable=unused-variable
      pass


def test_method_rows_are_consistent():
  with pytest.raises(ValueError, match="adapt_kind names the kind of a FRESH adapter"):
    methods.Method("x", adaptation=methods.Adaptation.FRESH, adapt_trains={Role.LORA})
  with pytest.raises(ValueError, match="heads is set for routed multi-task methods only"):
    methods.Method("x", adaptation=methods.Adaptation.MU, adapt_trains={Role.LORA},
                   multitask=methods.Multitask.ROUTED_SKILLS,
                   multitask_trains={Role.SKILLS, Role.ROUTING})
  with pytest.raises(ValueError, match="stage='eval' trains no parameters"):
    methods.trainable_predicate("mhr", stage="eval")
