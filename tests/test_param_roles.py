"""The one table of parameter roles (spr/param_roles.py) and the rules that read it."""

import jax
import jax.numpy as jnp
import numpy as np

from agents.spr.config import make_config
from agents.spr.learner import SPRLearner
from spr import param_roles


def test_roles_of_hand_named_modules():
  cases = {
      "spr/~/encoder/conv0": "encoder",
      "spr/~/encoder/~/block_0/bn": "encoder",
      "spr/~/transition/conv0": "transition",
      "spr/~/predictor": "predictor",
      "spr/~/value_hidden": "head_first",
      "spr/~/advantage_hidden": "head_first",
      "spr/~/shared_hidden": "head_first",
      "spr/~/value_out": "head",
      "sgi/~/inverse_hidden": "inverse",
      "sgi/~/inverse_out": "inverse",
  }
  for name, expected in cases.items():
    assert param_roles.role(name) == expected, name


def test_rules_by_role():
  clip = {r: param_roles.clip_group(r) for r in param_roles.ROLES}
  assert clip == {
      "encoder": "stem",
      "transition": "transition",
      "head_first": "stem",
      "head": "stem",
      "predictor": "unclipped",
      "inverse": "unclipped",
  }
  assert {r for r in param_roles.ROLES if param_roles.shrink_perturbed(r)} == {
      "encoder",
      "transition",
  }
  assert [param_roles.lr_group(r) for r in ("encoder", "head_first", "transition", "head")] == [
      "encoder",
      "head_first",
      "rest",
      "rest",
  ]
  assert param_roles.finetuning_reuses("head_first") == ("w_mu", "b_mu")
  assert param_roles.finetuning_reuses("head") is False


def test_every_module_of_the_real_networks_has_a_role():
  """The SPR (dueling) and BBF (shared head) networks: each module maps to the role its name
  says, and every role a network has is one of the table's."""
  for name in ("smoke", "bbf_smoke"):
    learner = SPRLearner(make_config(name), 4)
    params = learner.network.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 84, 84)))
    roles = {param_roles.role(m) for m in params}
    assert {"encoder", "transition", "head_first", "head", "predictor"} <= roles
    assert roles <= set(param_roles.ROLES)
    labels = param_roles.labels(params, param_roles.clip_group)
    assert set(labels) == set(params) and all(set(labels[m]) == set(params[m]) for m in params)
    assert np.all(
        [labels[m][k] == "transition" for m in params if "/transition" in m for k in params[m]]
    )
