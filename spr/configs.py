"""Configs of the SPR-family agents: the fields they share, and one generic parse / make / load.

`AgentConfig` declares, with their checks, the fields every agent of the family has (the SPR
agent's `SPRConfig` and SGI pretraining's `SGIConfig`). An agent's config subclasses it, adds
its own fields and checks, and re-declares a shared field only to give it another default: a
dataclass keeps the field's place and its check. config.json is the flat `to_json()` dict, and
command-line flags are the field names, so a field's name is its flag and its config.json key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from spr.networks import NetworkConfig

C = TypeVar("C", bound="AgentConfig")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
  """Hyperparameters every agent of the family has. Defaults are the SPR agent's."""

  steps: int = 100_000  # length of the run, in the agent's steps (env steps or gradient updates)
  batch_size: int = 32
  # Network; a pretrained network fits a finetuning run only when these agree (agents/sgi/finetune).
  encoder: str = "nature"  # "nature" | "impala" | "sgi_m" | "sgi_ml"; each agent checks its own
  encoder_channels: tuple[int, ...] = (32, 64, 64)
  resnet_norm: str = "batch"  # sgi_* encoders: "batch" (running statistics, SGI) | "layer" | "none"
  hidden: int = 256
  num_atoms: int = 51
  v_min: float = -10.0
  v_max: float = 10.0
  transition_hidden: int = 64
  # Objectives.
  spr_steps: int = 5  # K; its range is the agent's (SGI's objectives need K >= 1)
  spr_weight: float = 5.0  # times the mean over k = 1..K
  gamma: float = 0.99
  augmentation: bool = True  # random shift (pad 4) + intensity, online and target inputs
  target_tau: float = 1.0  # weight of the ONLINE params in the target update; 1 = copy
  # Optimiser.
  learning_rate: float = 1e-4
  adam_eps: float = 1.5e-4
  grad_clip: float = 10.0  # global-norm clip; 0 disables
  # Bookkeeping, in the agent's steps.
  log_every: int = 1000  # between metrics.jsonl lines
  checkpoint_every: int = 10_000
  checkpoint_keep: int = 2

  def checks(self) -> list[tuple[bool, str]]:
    """(holds, message) of each rule on the shared fields; an agent appends its own rules."""
    return [
        (self.steps > 0, "steps must be > 0"),
        (self.batch_size > 0, "batch_size must be > 0"),
        (
            self.resnet_norm in ("batch", "layer", "none"),
            "resnet_norm must be 'batch', 'layer' or 'none'",
        ),
        (self.num_atoms >= 2, "num_atoms must be >= 2"),
        (self.v_min < self.v_max, "v_min must be < v_max"),
        (self.spr_weight >= 0, "spr_weight must be >= 0"),
        (0.0 < self.gamma <= 1.0, "gamma must be in (0, 1]"),
        (0.0 < self.target_tau <= 1.0, "target_tau must be in (0, 1]"),
        (self.learning_rate > 0 and self.adam_eps > 0, "learning_rate and adam_eps must be > 0"),
        (self.grad_clip >= 0, "grad_clip must be >= 0"),
        (
            self.checkpoint_every > 0 and self.log_every > 0,
            "checkpoint_every and log_every must be > 0",
        ),
        (self.checkpoint_keep >= 1, "checkpoint_keep must be >= 1"),
    ]

  def validate(self: C) -> C:
    """Returns self; raises ValueError with the message of the first rule that fails."""
    for ok, message in self.checks():
      if not ok:
        raise ValueError(message)
    return self

  def network(self) -> NetworkConfig:
    """The network: each NetworkConfig field this config has, the others at their defaults."""
    own = {f.name for f in dataclasses.fields(self)}
    values = {
        f.name: getattr(self, f.name) for f in dataclasses.fields(NetworkConfig) if f.name in own
    }
    return NetworkConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

  def to_json(self) -> dict[str, Any]:
    """The flat dict config.json holds (tuples stay tuples here; json writes them as lists)."""
    return dataclasses.asdict(self)


def parse_override(config_cls: type[C], name: str, text: str) -> Any:
  """Parses override `text` for field `name` of the dataclass `config_cls` into its type.

  bool accepts 1/0, true/false, yes/no; int accepts integral floats ("1e5"); a tuple of ints is
  written "32,64,64". Raises ValueError with a one-line message naming the flag when malformed.
  """
  fields = {f.name: f for f in dataclasses.fields(config_cls)}
  if name not in fields:
    raise ValueError(f"unknown setting {name!r}")
  default = fields[name].default
  try:
    if isinstance(default, bool):
      low = text.strip().lower()
      if low in ("1", "true", "yes"):
        return True
      if low in ("0", "false", "no"):
        return False
      raise ValueError(text)
    if isinstance(default, int):
      value = float(text)
      if value != int(value):
        raise ValueError(text)
      return int(value)
    if isinstance(default, float):
      return float(text)
    if isinstance(default, tuple):
      return tuple(int(v) for v in text.replace("(", "").replace(")", "").split(",") if v.strip())
    return text
  except ValueError:
    kind = type(default).__name__
    raise ValueError(f"malformed value {text!r} for --{name} (expected {kind})") from None


def make_named(
    config_cls: type[C],
    named: dict[str, dict[str, Any]],
    name: str,
    overrides: dict[str, Any] | None = None,
) -> C:
  """`config_cls` built from the named configuration `name` plus typed `overrides`, validated."""
  if name not in named:
    raise ValueError(f"unknown config {name!r}; valid: {', '.join(sorted(named))}")
  values = dict(named[name])
  values.update(overrides or {})
  return config_cls(**values).validate()


def from_json(config_cls: type[C], data: dict[str, Any]) -> C:
  """Rebuilds a config from its config.json dict (lists back to tuples, other keys ignored)."""
  names = {f.name for f in dataclasses.fields(config_cls)}
  return config_cls(
      **{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
  )
