"""The Catch settings of the CPU learning checks: tests/test_catch_learning.py trains them, and
`python -m launch.learning_curves` draws their curves. CPU-size networks tuned for Catch, not the
papers' agent sizes (docs/LEARNING.md). A module without flags, so that both can import it.
"""

STEPS = 2500
COMMON_FLAGS = [
    f"--steps={STEPS}",
    "--learn_start=200",
    "--batch_size=32",
    "--replay_capacity=5000",
    "--v_min=-2",
    "--v_max=2",
    "--learning_rate=0.001",
    "--eval_episodes=50",
    "--eval_every=500",
    "--eval_every_episodes=10",
    "--log_every=500",
    f"--checkpoint_every={STEPS}",
]
SPR_FLAGS = [
    "--config=smoke",
    *COMMON_FLAGS,
    "--hidden=128",
    "--n_step=5",
    "--target_tau=0.05",
    "--bootstrap_with_target=true",
]
BBF_FLAGS = [
    "--config=bbf_smoke",
    *COMMON_FLAGS,
    "--encoder=nature",
    "--encoder_channels=8,8,8",
    "--hidden=64",
    "--n_step=5",
    "--n_step_final=3",
    "--anneal_updates=1000",
    "--reset_every_updates=500",
    "--reset_until=1000",
    "--epsilon_decay_steps=1000",
    "--target_tau=0.05",
]
# SGI: random-policy Catch data, pretrained with the SGI objectives on the SPR variant's network
# (Nature CNN 8-8-8, 128 hidden units, 11 atoms), then SPR's settings from that initialisation.
SGI_COLLECT_FLAGS = ["--game=catch", "--policy=random", "--steps=20000", "--checkpoint_size=20000"]
SGI_PRETRAIN_FLAGS = [
    "--config=smoke",
    "--encoder=nature",
    "--hidden=128",
    "--steps=2000",
    "--batch_size=32",
    "--games=catch",
]
VARIANTS = {
    "spr": SPR_FLAGS,
    "spr_weight_0": [*SPR_FLAGS, "--spr_weight=0"],
    "bbf": BBF_FLAGS,
    "sgi_init": SPR_FLAGS,  # + --init_from=<out>/sgi_pretrain
}
LABELS = {
    "spr": "SPR",
    "spr_weight_0": "SPR, spr_weight=0",
    "bbf": "BBF-style",
    "sgi_init": "SPR from SGI pretraining",
}
