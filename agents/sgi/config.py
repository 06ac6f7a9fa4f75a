"""Configuration of SGI pretraining (Schwarzer et al., "Pretraining Representations for
Data-Efficient Reinforcement Learning", NeurIPS 2021) and its named configurations.

Defaults are SGI-M's pretraining run (mila-iqia/SGI scripts/experiments/sgim_pretrain.sh on top of
scripts/config.yaml): SPR + goal-conditioned RL + inverse dynamics, weight 1 each; EMA target 0.01
(momentum_tau and target_update_tau); batch 256; Adam 1e-4 (eps 1.5e-4); gradient clipping 10
(encoder + heads and transition model separately); no noisy-net noise; K = 5; goal window 50;
goal n-step 1; gamma 0.99; C51 51 atoms on [-10, 10]; head hidden 512; SGI-M's ResNet with
BatchNorm (running statistics). SGI trains 20 epochs over 3M transitions (checkpoints 1/25/50):
234,375 updates of 256; `steps` counts gradient updates.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from spr import configs
from spr.networks import NetworkConfig


@dataclasses.dataclass(frozen=True)
class SGIConfig:
  """All hyperparameters of one pretraining run. Names are the command-line override names."""
  steps: int = 234_375  # gradient updates (20 epochs x 3M transitions / 256)
  batch_size: int = 256
  # Network (the finetuning SPRConfig must match these: see agents/sgi/finetune.py).
  encoder: str = "sgi_m"  # "sgi_m" | "sgi_ml" | "nature"
  encoder_channels: tuple[int, ...] = (32, 64, 64)
  resnet_norm: str = "batch"  # sgi_* encoders: BatchNorm with running statistics (SGI's "bn")
  hidden: int = 512
  num_atoms: int = 51
  v_min: float = -10.0
  v_max: float = 10.0
  transition_hidden: int = 64
  # Objectives.
  spr_steps: int = 5  # K
  spr_weight: float = 1.0  # times the mean over k = 1..K
  goal_weight: float = 1.0
  inverse_weight: float = 1.0
  gamma: float = 0.99
  goal_window: int = 50  # hindsight goal j in [2, window - 1] steps ahead, within the episode
  goal_noise: float = 0.5
  goal_permute_prob: float = 0.2
  goal_reward_scale: float = 10.0
  goal_distance_scale: float = 5.0
  augmentation: bool = True
  # Actions as ALE ids of the full 18-action set (SGI's full_action_set): needed to pretrain on
  # games whose minimal action sets differ; finetuning slices the transition model back to the
  # game's minimal set (agents/sgi/finetune.py).
  full_action_set: bool = False
  target_tau: float = 0.01  # EMA weight of the online params (SGI momentum 0.99)
  # Optimiser.
  learning_rate: float = 1e-4
  adam_eps: float = 1.5e-4
  grad_clip: float = 10.0  # global-norm clip; 0 disables
  # Bookkeeping.
  log_every: int = 1000  # gradient steps between metrics.jsonl lines
  checkpoint_every: int = 10_000
  checkpoint_keep: int = 2

  def network(self) -> NetworkConfig:
    return NetworkConfig(encoder=self.encoder, encoder_channels=tuple(self.encoder_channels),
                         resnet_norm=self.resnet_norm, hidden=self.hidden,
                         num_atoms=self.num_atoms, noisy=False,
                         transition_hidden=self.transition_hidden)

  def validate(self) -> "SGIConfig":
    checks = [
        (self.steps > 0, "steps must be > 0"),
        (self.batch_size > 0, "batch_size must be > 0"),
        (self.spr_steps >= 1, "spr_steps must be >= 1"),
        (self.goal_window >= 2, "goal_window must be >= 2"),
        (self.num_atoms >= 2, "num_atoms must be >= 2"),
        (self.v_min < self.v_max, "v_min must be < v_max"),
        (0.0 < self.target_tau <= 1.0, "target_tau must be in (0, 1]"),
        (self.encoder in ("nature", "sgi_m", "sgi_ml"),
         "encoder must be 'sgi_m', 'sgi_ml' or 'nature'"),
        (0.0 <= self.goal_permute_prob <= 1.0, "goal_permute_prob must be in [0, 1]"),
        (self.resnet_norm in ("batch", "layer", "none"),
         "resnet_norm must be 'batch', 'layer' or 'none'"),
        (self.log_every > 0 and self.checkpoint_every > 0,
         "log_every and checkpoint_every must be > 0"),
        (self.checkpoint_keep >= 1, "checkpoint_keep must be >= 1"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)
    return self

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


CONFIGS: dict[str, dict[str, Any]] = {
    "sgi_m": {},
    "sgi_ml": dict(encoder="sgi_ml", steps=117_188),  # 6M transitions, 10 epochs
    # Tiny network and data for tests; matches `launch.train --config=smoke --encoder=sgi_m`.
    "smoke": dict(steps=20, batch_size=8, encoder_channels=(8, 8, 8), hidden=16, num_atoms=11,
                  transition_hidden=8, spr_steps=2, goal_window=6, log_every=5,
                  checkpoint_every=10),
}


def parse_value(name: str, text: str) -> Any:
  """Parses a command-line override for field `name` (ValueError naming the flag if malformed)."""
  return configs.parse_override(SGIConfig, name, text)


def make_config(name: str, overrides: dict[str, Any] | None = None) -> SGIConfig:
  """The named configuration with `overrides` applied (already typed), validated."""
  return configs.make_named(SGIConfig, CONFIGS, name, overrides)


def config_from_json(data: dict[str, Any]) -> SGIConfig:
  return configs.from_json(SGIConfig, data)
