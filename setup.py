"""Self-predictive representation learning in RL: SPR/SGI/BBF agents on Atari 100k and the
tabular theory of self-predictive learning (Tang et al. 2023, Richemond et al. 2023)."""

from setuptools import find_packages, setup

setup(
    name="self-predictive-rl",
    version="0.1.0",
    description=" ".join(__doc__.split()),
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["spr*", "agents*", "envs*", "theory*", "launch*"]),
    package_data={"envs": ["scores.csv"]},
    install_requires=[
        "jax>=0.4.35",
        "dm-haiku>=0.0.13",  # plain dm-haiku: the [jax] extra resolves to an older release
        "optax>=0.2.5",  # optax.tree.norm
        "chex>=0.1.87",  # shape/type assertions and variant tests (rlax style)
        "gymnasium>=1.0",
        "ale-py>=0.9",  # ships the ROMs
        "opencv-python-headless",  # needed by gymnasium's AtariPreprocessing
        "numpy>=1.26",
        "absl-py>=2.0",
        "tqdm",  # progress bar on a terminal, silent in logs
        "matplotlib",  # theory figures and report plots
        "submitit>=1.5",  # local and SLURM sweep backends
        "rliable>=1.2",  # stratified-bootstrap aggregate metrics
        "pandas<3",  # rliable's dependency chain breaks on pandas 3 (arch import)
    ],
    # pytest-xdist: the suite runs as 2 worker processes, one test file each at a time (1.4x faster
    # on 2 cores: the entry-point tests wait on subprocesses and compilations).
    # pyink, pinned: the formatter CI checks (pyproject.toml); another release formats otherwise.
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.5", "pyink==26.5.1"]},
)
