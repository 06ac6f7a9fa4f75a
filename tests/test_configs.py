"""The agents' configs: shared fields declared once, generic network / parse / make / load."""

import dataclasses
import json

import pytest

from agents.sgi import config as sgi_config
from agents.spr import config as spr_config
from spr import configs
from spr.networks import NetworkConfig

AGENTS = (spr_config, sgi_config)


def _names(cls):
  return [f.name for f in dataclasses.fields(cls)]


def _defaults(cls):
  return {f.name: f.default for f in dataclasses.fields(cls)}


def test_the_fields_both_agents_have_are_exactly_the_shared_ones():
  shared = set(_names(configs.AgentConfig))
  assert set(_names(spr_config.SPRConfig)) & set(_names(sgi_config.SGIConfig)) == shared
  assert len(shared) == 21


def test_a_shared_default_applies_to_both_unless_an_agent_redeclares_it():
  base, spr, sgi = (
      _defaults(c) for c in (configs.AgentConfig, spr_config.SPRConfig, sgi_config.SGIConfig)
  )
  assert all(spr[n] == v for n, v in base.items())  # SPR has the shared defaults
  sgi_m = dict(
      steps=234_375, batch_size=256, encoder="sgi_m", hidden=512, spr_weight=1.0, target_tau=0.01
  )
  assert {n: sgi[n] for n in base if sgi[n] != base[n]} == sgi_m
  assert (sgi["num_atoms"], sgi["learning_rate"], sgi["grad_clip"], sgi["checkpoint_keep"]) == (
      51,
      1e-4,
      10.0,
      2,
  )


# One bad value per shared check, with the message it gives in both agents.
SHARED_CHECKS = [
    ("steps", 0, "steps must be > 0"),
    ("batch_size", 0, "batch_size must be > 0"),
    ("resnet_norm", "group", "resnet_norm must be 'batch', 'layer' or 'none'"),
    ("num_atoms", 1, "num_atoms must be >= 2"),
    ("v_min", 20.0, "v_min must be < v_max"),
    ("v_max", -20.0, "v_min must be < v_max"),
    ("spr_weight", -1.0, "spr_weight must be >= 0"),
    ("gamma", 1.5, "gamma must be in (0, 1]"),
    ("target_tau", 0.0, "target_tau must be in (0, 1]"),
    ("learning_rate", 0.0, "learning_rate and adam_eps must be > 0"),
    ("adam_eps", -1.0, "learning_rate and adam_eps must be > 0"),
    ("grad_clip", -1.0, "grad_clip must be >= 0"),
    ("log_every", 0, "checkpoint_every and log_every must be > 0"),
    ("checkpoint_every", 0, "checkpoint_every and log_every must be > 0"),
    ("checkpoint_keep", 0, "checkpoint_keep must be >= 1"),
]


@pytest.mark.parametrize("agent", AGENTS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("name,value,message", SHARED_CHECKS, ids=[c[0] for c in SHARED_CHECKS])
def test_a_shared_check_applies_to_both_agents(agent, name, value, message):
  for config_name in agent.CONFIGS:
    with pytest.raises(ValueError) as err:
      agent.make_config(config_name, {name: value})
    assert str(err.value) == message


def test_every_shared_field_has_a_check_or_is_free():
  checked = {c[0] for c in SHARED_CHECKS}
  # Free: any value runs, or the range is the agent's own (encoder, spr_steps).
  free = {"encoder", "encoder_channels", "hidden", "transition_hidden", "spr_steps", "augmentation"}
  assert checked | free == set(_names(configs.AgentConfig))


def test_each_agent_narrows_the_encoder_and_spr_steps():
  with pytest.raises(ValueError, match="encoder must be 'sgi_m', 'sgi_ml' or 'nature'"):
    sgi_config.make_config("smoke", {"encoder": "impala"})
  spr_config.make_config("smoke", {"encoder": "impala"})
  with pytest.raises(ValueError, match="spr_steps must be >= 1"):
    sgi_config.make_config("smoke", {"spr_steps": 0})
  assert spr_config.make_config("smoke", {"spr_steps": 0}).spr_steps == 0


def _changed(value):
  """A value of the same type as `value` and different from it."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, (int, float)):
    return value + 3
  if isinstance(value, tuple):
    return value + (7,)
  return value + "_x"


def test_spr_network_carries_every_network_field():
  assert set(_names(NetworkConfig)) <= set(_names(spr_config.SPRConfig))
  assert spr_config.SPRConfig().network() == NetworkConfig()  # SPR's network is the default one
  values = {n: _changed(v) for n, v in _defaults(NetworkConfig).items()}
  network = spr_config.SPRConfig(**values).network()
  assert dataclasses.asdict(network) == values
  # A list (a config built by hand from JSON) reaches the network as a tuple.
  assert spr_config.SPRConfig(encoder_channels=[4, 4]).network().encoder_channels == (4, 4)


def test_sgi_network_carries_its_fields_without_noise():
  own = set(_names(NetworkConfig)) & set(_names(sgi_config.SGIConfig))
  assert own == {
      "encoder",
      "encoder_channels",
      "resnet_norm",
      "hidden",
      "num_atoms",
      "transition_hidden",
  }
  values = {n: _changed(getattr(sgi_config.SGIConfig, n)) for n in own}
  network = dataclasses.asdict(sgi_config.SGIConfig(**values).network())
  expected = dict(_defaults(NetworkConfig), **values, noisy=False)
  assert network == expected


@pytest.mark.parametrize("agent", AGENTS, ids=lambda m: m.__name__)
def test_named_configs_are_frozen_hashable_and_round_trip_through_config_json(agent):
  for name in agent.CONFIGS:
    config = agent.make_config(name)
    data = json.loads(json.dumps(config.to_json()))
    assert list(data) == _names(type(config))  # flat: one key per field
    again = agent.config_from_json(dict(data, config_name=name, game="Pong"))  # extras ignored
    assert again == config and hash(again) == hash(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
      config.steps = 1


@pytest.mark.parametrize("agent", AGENTS, ids=lambda m: m.__name__)
def test_parse_make_and_load_are_the_generic_ones(agent):
  cls = type(agent.make_config(next(iter(agent.CONFIGS))))
  assert agent.parse_value("steps", "1e3") == 1000
  assert agent.parse_value("augmentation", "no") is False
  assert agent.parse_value("encoder_channels", "8,16") == (8, 16)
  with pytest.raises(ValueError, match=r"malformed value 'abc' for --hidden \(expected int\)"):
    agent.parse_value("hidden", "abc")
  with pytest.raises(ValueError, match="unknown setting 'bogus'"):
    agent.parse_value("bogus", "1")
  with pytest.raises(ValueError, match="unknown config 'nope'; valid: "):
    agent.make_config("nope")
  assert agent.make_config(next(iter(agent.CONFIGS)), {"hidden": 8}).hidden == 8
  assert (agent.parse_value.func, agent.make_config.func, agent.config_from_json.func) == (
      configs.parse_override,
      configs.make_named,
      configs.from_json,
  )
  assert agent.parse_value.args == agent.config_from_json.args == (cls,)
  assert agent.make_config.args == (cls, agent.CONFIGS)
