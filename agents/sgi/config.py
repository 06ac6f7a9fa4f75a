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
import functools
from typing import Any

from spr import configs
from spr.networks import NetworkConfig


@dataclasses.dataclass(frozen=True)
class SGIConfig(configs.AgentConfig):
  """All hyperparameters of one pretraining run. Names are the command-line override names.

  The fields shared with the SPR agent, and their checks, are spr.configs.AgentConfig's; those
  re-declared here have SGI-M's defaults. `steps`, `log_every` and `checkpoint_every` count
  gradient updates. The network fields must match the finetuning run's (agents/sgi/finetune.py).
  """

  steps: int = 234_375  # 20 epochs x 3M transitions / 256
  batch_size: int = 256
  encoder: str = "sgi_m"  # "sgi_m" | "sgi_ml" | "nature"
  hidden: int = 512
  spr_weight: float = 1.0
  target_tau: float = 0.01  # SGI's momentum 0.99
  # Objectives besides SPR.
  goal_weight: float = 1.0
  inverse_weight: float = 1.0
  goal_window: int = 50  # hindsight goal j in [2, window - 1] steps ahead, within the episode
  goal_noise: float = 0.5
  goal_permute_prob: float = 0.2
  goal_reward_scale: float = 10.0
  goal_distance_scale: float = 5.0
  # Actions as ALE ids of the full 18-action set (SGI's full_action_set): needed to pretrain on
  # games whose minimal action sets differ; finetuning slices the transition model back to the
  # game's minimal set (agents/sgi/finetune.py).
  full_action_set: bool = False

  def checks(self) -> list[tuple[bool, str]]:
    return super().checks() + [
        (self.spr_steps >= 1, "spr_steps must be >= 1"),
        (self.goal_window >= 2, "goal_window must be >= 2"),
        (
            self.encoder in ("nature", "sgi_m", "sgi_ml"),
            "encoder must be 'sgi_m', 'sgi_ml' or 'nature'",
        ),
        (0.0 <= self.goal_permute_prob <= 1.0, "goal_permute_prob must be in [0, 1]"),
    ]

  def network(self) -> NetworkConfig:
    return dataclasses.replace(super().network(), noisy=False)  # SGI pretrains without noise


CONFIGS: dict[str, dict[str, Any]] = {
    "sgi_m": {},
    "sgi_ml": dict(encoder="sgi_ml", steps=117_188),  # 6M transitions, 10 epochs
    # Tiny network and data for tests; matches `launch.train --config=smoke --encoder=sgi_m`.
    "smoke": dict(
        steps=20,
        batch_size=8,
        encoder_channels=(8, 8, 8),
        hidden=16,
        num_atoms=11,
        transition_hidden=8,
        spr_steps=2,
        goal_window=6,
        log_every=5,
        checkpoint_every=10,
    ),
}

# The generic parse / make / load of spr.configs, bound to this agent's class and named configs.
parse_value = functools.partial(configs.parse_override, SGIConfig)
make_config = functools.partial(configs.make_named, SGIConfig, CONFIGS)
config_from_json = functools.partial(configs.from_json, SGIConfig)
