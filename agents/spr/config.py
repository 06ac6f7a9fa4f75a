"""Configuration of the SPR agent, and the named configurations.

Every default is the value the SPR reference code (mila-iqia/spr) ran for the published Atari
100k results; see the field comments, and docs/FIDELITY.md for every behaviour of the `spr`,
`sgi` and `bbf` configs against the reference code, with the test that pins it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from spr import configs, replay
from spr.predictors import PREDICTORS

PREDICTOR_NAMES = ("linear",) + tuple(sorted(PREDICTORS))


@dataclasses.dataclass(frozen=True)
class SPRConfig(configs.AgentConfig):
  """All hyperparameters of one SPR run. Names are the command-line override names.

  The fields every agent shares (steps, batch_size, the encoder and head sizes, spr_steps,
  spr_weight, gamma, target_tau, the optimiser, log and checkpoint cadence) are declared with
  their defaults and checks in spr.configs.AgentConfig; here `steps`, `log_every` and
  `checkpoint_every` count agent (env) steps, 100k steps = 400k frames.
  """

  # Budget and schedule.
  # a_0..a_learn_start uniformly random; the first updates run once learn_start + 1 transitions
  # are stored (rlpyt's min_itr_learn, Dopamine's add_count > min_replay_history).
  learn_start: int = 2000
  updates_per_step: int = 2  # gradient updates per env step (the code's replay ratio 64 / batch 32)
  eval_episodes: int = 100  # final evaluation: full games, epsilon 0.001, noise off
  eval_epsilon: float = 0.001
  eval_every: int = 0  # env steps between periodic evaluations (0: only the final one)
  eval_every_episodes: int = 10  # episodes of a periodic evaluation
  # env steps between representation diagnostics (`SPRLearner.diagnostics`: srank, dormant
  # units, predictor shape, per-k SPR cosine, gradient norms per role) in metrics.jsonl; 0: none.
  # They read the state and change nothing, so the trajectory is the same with or without them.
  diagnostics_every: int = 5000
  # Replay samples of one diagnostics call: srank is at most the number of samples, so the
  # training batch (4 in `smoke`) would cap it. A call costs ~50 updates of `spr`, once every
  # `diagnostics_every` env steps (docs/BENCHMARKS.md).
  diagnostics_batch_size: int = 256
  # Env: "spr" = the SPR/SGI code's own ALE env (mila-iqia/spr src/rlpyt_atari_env.py);
  # "dopamine" = Dopamine's / gymnasium's AtariPreprocessing, which BBF runs. envs/atari.py.
  env_protocol: str = "spr"
  # Network (with the shared encoder and head sizes); see spr.networks.NetworkConfig.
  encoder_chunk: int = -1  # no-gradient encoder passes in chunks of this size; -1 auto, 0 none
  impala_width: int = 4
  noisy: bool = True
  noisy_std: float = 0.5
  head: str = "dueling"  # "dueling" (SPR) | "shared" (BBF: one 2*hidden layer = projection)
  transition_norm: bool = True  # BatchNorm in the transition model (BBF's ConvTMCell: none)
  init: str = "torch"  # "torch" | "xavier" (BBF: xavier_uniform weights, zero biases)
  renorm_eps: float = 0.0  # latent min-max renormalisation: 0 SPR's guard, BBF 1e-5
  # Losses.
  n_step: int = 10
  # Move the EMA target towards the online params as they were BEFORE this update (the SPR and SGI
  # code move it inside the forward pass, so with tau 1 the SPR targets lag one update behind) or
  # after it (BBF). With tau 1 and False the target IS the online network and is not stored
  # (`has_target`). docs/FIDELITY.md, table (b).
  target_ema_before_update: bool = True
  double_dqn: bool = True
  # n-step target. "textbook" (rlpyt / SPR): bootstrap gamma^n Z(s_{t+n}) unless one of
  # d_t..d_{t+n-1} is terminal. "bbf" (BBF's replay, as its published numbers ran): gamma^n
  # Z(s_{t+n-1}), and only d_t..d_{t+n-2} stop it. Both sum the rewards up to the first terminal.
  n_step_convention: str = "textbook"
  # Augmentation of the next state s_{t+n}: an independent draw for the bootstrap network and for
  # the double-DQN selector ("independent", the SPR code's separate forwards) or one draw that
  # both see ("shared", BBF's spr_agent.py).
  next_state_augmentation: str = "independent"
  # Replay.
  replay_capacity: int = 100_000
  priority_alpha: float = 0.5
  priority_beta_start: float = 0.4
  priority_beta_end: float = 1.0  # annealed linearly over learn_start..steps (rlpyt's clock)
  # Stored priority: "kl" (the SPR code's clamped KL(target || prediction)) or "ce" (BBF: the C51
  # cross-entropy + 1e-10, sampled with alpha 0.5 as its sqrt(CE + 1e-10)).
  priority_kind: str = "kl"
  # Whose replay to reproduce (spr.replay.PROTOCOLS): "rlpyt" (the SPR / SGI code), "bbf" (BBF) or
  # "horizon" (this codebase's earlier rule, which older runs resume with).
  replay_protocol: str = "rlpyt"
  # BBF (Schwarzer et al., ICML 2023). The defaults keep SPR's behaviour; see the `bbf` config.
  optimizer: str = "adam"  # "adam" | "adamw" (decoupled weight decay, biases not decayed)
  weight_decay: float = 0.0  # AdamW weight decay (BBF 0.1; optax multiplies it by the lr)
  n_step_final: int = 0  # n annealed exponentially from n_step down to this (0: fixed n_step)
  gamma_start: float = 0.0  # gamma annealed from this up to `gamma` (0: fixed gamma)
  anneal_updates: int = 0  # gradient updates of the annealing after the start and each reset
  # Shrink-and-perturb resets every `reset_every_updates` gradient updates (BBF: 40k, its 20k env
  # steps at replay ratio 2), or every `reset_every` env steps; 0 and 0: never (`reset_interval`).
  reset_every: int = 0
  reset_every_updates: int = 0
  reset_until: int = 0  # no reset at step s unless s + interval <= reset_until (env steps)
  shrink_factor: float = 0.5  # weight of the old encoder/transition params at a reset
  perturb_factor: float = 0.5  # weight of a fresh init at a reset (head etc.: fully fresh)
  epsilon_train: float = 0.0  # final training epsilon (SPR: 0, noisy nets explore)
  epsilon_decay_steps: int = 0  # linear 1 -> epsilon_train over this many steps after
  #                               learn_start (0: random through a_learn_start, then epsilon_train)
  act_with_target: bool = False  # act (training and evaluation) with the target params
  # C51 bootstrap from the target (True: BBF) or from the online params (False: the SPR code
  # re-syncs its target network after every optimiser step, so it is the current network).
  bootstrap_with_target: bool = False
  # SPR predictor: "linear" (learned, the SPR default) or a closed-form one of spr.predictors
  # (lrp, ne, visser, ns, ns2, stiefel, directpred, directcopy) from EMA batch statistics.
  predictor: str = "linear"
  predictor_ema: float = 0.99
  predictor_ridge: float = 0.0
  # SGI finetuning (Schwarzer et al., NeurIPS 2021; see the `sgi` config and agents/sgi/).
  init_from: str = ""  # launch.pretrain workdir (or its pretrained.npz), loaded by a NEW run
  encoder_lr: float = 0.0  # encoder learning rate (SGI 1e-6); 0: learning_rate
  head_first_lr: float = 0.0  # first Q-head layer = projection (SGI 3e-5); 0: learning_rate

  @property
  def reset_interval(self) -> int:
    """Env steps between BBF resets (0: none): `reset_every`, or `reset_every_updates` at this
    config's replay ratio."""
    if self.reset_every_updates:
      return self.reset_every_updates // self.updates_per_step
    return self.reset_every

  @property
  def has_target(self) -> bool:
    """Whether a target network is stored apart from the online one: an EMA (tau < 1), or a copy
    that lags one update behind (tau = 1 moved before the update, as the SPR code)."""
    return self.target_tau < 1.0 or self.target_ema_before_update

  def checks(self) -> list[tuple[bool, str]]:
    return super().checks() + [
        (0 <= self.learn_start < self.steps, "learn_start must be in [0, steps)"),
        (
            self.replay_protocol in replay.PROTOCOLS,
            f"replay_protocol must be one of {', '.join(replay.PROTOCOLS)}",
        ),
        (self.updates_per_step >= 0, "updates_per_step must be >= 0"),
        (self.eval_episodes >= 0, "eval_episodes must be >= 0"),
        (self.diagnostics_every >= 0, "diagnostics_every must be >= 0"),
        (self.diagnostics_batch_size >= 1, "diagnostics_batch_size must be >= 1"),
        (self.n_step >= 1, "n_step must be >= 1"),
        (0.0 <= self.gamma_start < 1.0, "gamma_start must be in [0, 1)"),
        (
            self.encoder_lr >= 0 and self.head_first_lr >= 0 and self.weight_decay >= 0,
            "encoder_lr, head_first_lr and weight_decay must be >= 0",
        ),
        (self.noisy_std >= 0, "noisy_std must be >= 0"),
        (
            self.priority_alpha >= 0
            and 0 <= self.priority_beta_start <= 1
            and 0 <= self.priority_beta_end <= 1,
            "priority_alpha must be >= 0, priority_beta_start/end in [0, 1]",
        ),
        (0.0 <= self.eval_epsilon <= 1.0, "eval_epsilon must be in [0, 1]"),
        (self.spr_steps >= 0, "spr_steps must be >= 0"),
        (
            self.predictor in PREDICTOR_NAMES,
            f"predictor must be one of {', '.join(PREDICTOR_NAMES)}",
        ),
        (0.0 <= self.predictor_ema < 1.0, "predictor_ema must be in [0, 1)"),
        (
            self.encoder in ("nature", "impala", "sgi_m", "sgi_ml"),
            "encoder must be 'nature', 'impala', 'sgi_m' or 'sgi_ml'",
        ),
        (
            self.replay_capacity > max(self.n_step, self.spr_steps) + 4,
            "replay_capacity too small for n_step / spr_steps",
        ),
        (self.optimizer in ("adam", "adamw"), "optimizer must be 'adam' or 'adamw'"),
        (self.head in ("dueling", "shared"), "head must be 'dueling' or 'shared'"),
        (self.init in ("torch", "xavier"), "init must be 'torch' or 'xavier'"),
        (self.renorm_eps >= 0, "renorm_eps must be >= 0"),
        (self.priority_kind in ("kl", "ce"), "priority_kind must be 'kl' or 'ce'"),
        (self.env_protocol in ("spr", "dopamine"), "env_protocol must be 'spr' or 'dopamine'"),
        (
            not self.init_from or self.head == "dueling",
            "init_from (SGI finetuning) needs head='dueling' (SGI's first head layer per stream)",
        ),
        (0 <= self.n_step_final <= self.n_step, "n_step_final must be in [0, n_step]"),
        (
            self.anneal_updates >= 0 and self.reset_every >= 0 and self.reset_every_updates >= 0,
            "anneal_updates, reset_every and reset_every_updates must be >= 0",
        ),
        (
            not (self.reset_every and self.reset_every_updates),
            "set reset_every (env steps) or reset_every_updates, not both",
        ),
        (
            not self.reset_every_updates
            or (
                self.updates_per_step > 0 and self.reset_every_updates % self.updates_per_step == 0
            ),
            "reset_every_updates must be a multiple of updates_per_step",
        ),
        (
            self.n_step_convention in ("textbook", "bbf"),
            "n_step_convention must be 'textbook' or 'bbf'",
        ),
        (
            self.next_state_augmentation in ("independent", "shared"),
            "next_state_augmentation must be 'independent' or 'shared'",
        ),
        (0.0 <= self.epsilon_train <= 1.0, "epsilon_train must be in [0, 1]"),
        (
            not self.act_with_target or self.has_target,
            "act_with_target needs a stored target (target_tau < 1 or target_ema_before_update)",
        ),
    ]

  def validate(self) -> SPRConfig:
    super().validate()
    # The first update (once learn_start + 1 transitions are stored) needs a sampleable index;
    # checked last, as it reads the replay protocol and the horizons checked above.
    rule = replay.PROTOCOLS[self.replay_protocol]["rule"]
    first = replay.first_sampleable_count(rule, self.n_step, self.spr_steps)
    if self.learn_start + 1 < first:
      raise ValueError(
          f"learn_start must be >= {first - 1} with n_step={self.n_step}, spr_steps="
          f"{self.spr_steps} and replay_protocol={self.replay_protocol}: replay has nothing to "
          "sample before"
      )
    return self


# Settings added after runs were already being written, with the value that reproduces what the
# code did before each existed (spr.workdir.prepare reads an older config.json as having it):
# such a run resumes when its behaviour is unchanged and is refused, naming the setting, when not.
LEGACY_VALUES = {
    # SGI ResNets had no normalisation before BatchNorm was added; other encoders ignore the
    # setting, and read as the default so that their runs resume.
    "resnet_norm": lambda stored: (
        "none" if str(stored.get("encoder", "")).startswith("sgi") else SPRConfig.resnet_norm
    ),
    "target_ema_before_update": False,
    "bootstrap_with_target": True,
    # Every env was gymnasium's AtariPreprocessing before the SPR code's env existed.
    "env_protocol": "dopamine",
    "replay_protocol": "horizon",
    "reset_every_updates": 0,
    "n_step_convention": "textbook",
    "next_state_augmentation": "independent",
    # Diagnostics do not change a run: an older run resumes with its named config's cadence.
    "diagnostics_every": lambda stored: CONFIGS.get(stored.get("config_name"), {}).get(
        "diagnostics_every", SPRConfig.diagnostics_every
    ),
    # Deliberately today's default, not the training batch that older runs' diagnostics drew:
    # an older run resumes with the default flags, and its diag_ series switches to 256 samples.
    "diagnostics_batch_size": SPRConfig.diagnostics_batch_size,
}


_SMOKE = dict(
    steps=400,
    learn_start=100,
    batch_size=4,
    eval_episodes=2,
    encoder_channels=(8, 8, 8),
    hidden=16,
    num_atoms=11,
    transition_hidden=8,
    n_step=3,
    spr_steps=2,
    replay_capacity=1000,
    log_every=100,
    checkpoint_every=100,
    updates_per_step=1,
    diagnostics_every=0,
)

# BBF as google-research/bigger_better_faster runs it (bbf/configs/BBF.gin, agents/spr_agent.py,
# replay_memory/subsequence_replay_buffer.py, spr_networks.py). docs/FIDELITY.md table (d) gives
# each setting's reference line and test, and what of BBF's env and replay is not reproduced.
_BBF_RR2 = dict(
    encoder="impala",
    impala_width=4,
    hidden=1024,
    transition_hidden=128,
    noisy=False,
    head="shared",
    transition_norm=False,
    init="xavier",
    renorm_eps=1e-5,
    priority_kind="ce",
    priority_alpha=0.5,
    optimizer="adamw",
    weight_decay=0.1,
    grad_clip=0.0,
    target_tau=0.005,
    act_with_target=True,
    target_ema_before_update=False,
    bootstrap_with_target=True,
    n_step=10,
    n_step_final=3,
    gamma=0.997,
    gamma_start=0.97,
    anneal_updates=10_000,
    reset_every_updates=40_000,
    reset_until=100_000,
    shrink_factor=0.5,
    perturb_factor=0.5,
    n_step_convention="bbf",
    next_state_augmentation="shared",
    epsilon_train=0.0,
    epsilon_decay_steps=2001,
    priority_beta_start=0.5,
    priority_beta_end=0.5,
    replay_capacity=200_000,
    updates_per_step=2,
    env_protocol="dopamine",
    replay_protocol="bbf",
)
# Tiny BBF-like config for tests (every BBF mechanism, CPU-sized network).
_BBF_SMOKE = dict(
    _BBF_RR2,
    diagnostics_every=0,
    impala_width=1,
    hidden=16,
    num_atoms=11,
    transition_hidden=8,
    batch_size=4,
    steps=200,
    learn_start=50,
    eval_episodes=1,
    n_step=4,
    n_step_final=2,
    spr_steps=2,
    anneal_updates=40,
    reset_every_updates=50,
    reset_until=150,
    epsilon_decay_steps=30,
    replay_capacity=1000,
    log_every=50,
    checkpoint_every=50,
    updates_per_step=1,
)

CONFIGS: dict[str, dict[str, Any]] = {
    "spr": {},
    "smoke": _SMOKE,
    "bbf": dict(_BBF_RR2, updates_per_step=8),  # replay ratio 8 (the paper's headline BBF)
    "bbf_rr2": _BBF_RR2,  # replay ratio 2, as the shipped BBF.gin (replay_ratio 64 / batch 32)
    "bbf_smoke": _BBF_SMOKE,
    # SGI finetuning (mila-iqia/SGI scripts/experiments/sgim_finetune.sh + config.yaml); pass
    # --init_from=<pretraining workdir>. The EMA target (SGI's momentum_tau 0.01) gives only the
    # SPR targets; the C51 bootstrap uses the online net (SGI's target_update_tau 1).
    "sgi": dict(
        encoder="sgi_m",
        hidden=512,
        encoder_lr=1e-6,
        head_first_lr=3e-5,
        grad_clip=0.0,
        target_tau=0.01,
        target_ema_before_update=True,
        bootstrap_with_target=False,
    ),
}

# The generic parse / make / load of spr.configs, bound to this agent's class and named configs.
parse_value = functools.partial(configs.parse_override, SPRConfig)
make_config = functools.partial(configs.make_named, SPRConfig, CONFIGS)
config_from_json = functools.partial(configs.from_json, SPRConfig)
