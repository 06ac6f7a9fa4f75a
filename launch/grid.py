"""Sweep grids: game names, seed ranges, run labels and the workdir layout.

Layout of a sweep root (one workdir per run, see docs/CONTRACTS.md):

    ROOT/<label>/<game>/seed_<seed>/      config.json, metrics.jsonl, eval.csv, final.json, ...
    ROOT/<label>/sweep.json               what was asked: config, overrides, games, seeds
    ROOT/<label>/joint/seed_<seed>/       multi-game pretraining (one run over all games)

`label` is the configuration name plus its overrides (`spr`, `spr+lr=0.0003+steps=10000`):
runs with different overrides never share a workdir, so a smoke test cannot be mistaken for
(or skipped in place of) a full run.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

BUDGET_100K = 100_000  # agent steps of the Atari 100k benchmark
JOINT = "joint"  # game directory of a multi-game (joint) pretraining run
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9._=+-]")


class GridError(ValueError):
    """Bad sweep input (unknown game, bad seed range, ...): a one-line message."""


# --------------------------------------------------------------------------------------------
# Games. The one place that knows where the 26 names come from: switch it to `envs.games` here.
# --------------------------------------------------------------------------------------------
def scores_csv_path() -> Path:
    """envs/scores.csv (random, human, DER, SPR, BBF per game); $SPR_SCORES_CSV overrides it."""
    env = os.environ.get("SPR_SCORES_CSV")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "envs" / "scores.csv"


@functools.lru_cache(maxsize=4)
def read_scores_table(path: str | None = None) -> dict[str, dict[str, object]]:
    """snake_case game -> {ale_id, random, human, DER, SPR, BBF} (floats), file order."""
    p = Path(path) if path else scores_csv_path()
    if not p.exists():
        raise GridError(f"scores table not found: {p} (set $SPR_SCORES_CSV)")
    table: dict[str, dict[str, object]] = {}
    with open(p, newline="") as f:
        for row in csv.DictReader(f):
            game = row.pop("game").strip()
            table[game] = {k: (v if k == "ale_id" else float(v)) for k, v in row.items()}
    return table


def atari100k_games() -> list[str]:
    """The 26 Atari 100k games, snake_case (`ms_pacman`), in the benchmark's usual order."""
    try:  # the env package, once it exists, is the source of truth
        from envs import games as _games  # pylint: disable=import-outside-toplevel

        return [_games.get_game(n).rom for n in _games.GAMES]  # ROM ids are scores.csv's keys
    except (ImportError, AttributeError):
        pass
    return list(read_scores_table())


def snake_case(name: str) -> str:
    """`MsPacman`, `ms_pacman`, `ALE/MsPacman-v5`, `mspacman` -> the key used in scores.csv."""
    base = name.split("/")[-1]
    base = re.sub(r"-v\d+$", "", base)
    base = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", base).lower().replace("-", "_")
    return base


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_game(name: str) -> str:
    """Case/underscore-insensitive lookup of one of the 26 games; GridError if unknown."""
    known = {_squash(g): g for g in atari100k_games()}
    key = _squash(snake_case(name))
    if key not in known:
        raise GridError(f"unknown game {name!r} (expected one of the 26 Atari 100k games)")
    return known[key]


def ale_name(game: str) -> str:
    """snake_case game -> ALE CamelCase (`ms_pacman` -> `MsPacman`), as launch.train takes it."""
    table = read_scores_table()
    ale_id = str(table.get(game, {}).get("ale_id", ""))
    if ale_id:
        return ale_id.split("/")[-1].rsplit("-v", 1)[0]
    return "".join(part.capitalize() for part in game.split("_"))


def parse_games(spec: str) -> list[str]:
    """`all` or a comma list of names (any case) -> canonical snake_case names, no duplicates."""
    spec = spec.strip()
    if spec.lower() == "all":
        return atari100k_games()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise GridError("no games given (use --games=all or a comma list)")
    out: list[str] = []
    for n in names:
        g = canonical_game(n)
        if g not in out:
            out.append(g)
    return out


def parse_seeds(spec: str) -> list[int]:
    """`0-9`, `3`, `0,2,5-7` -> sorted distinct non-negative ints; GridError if malformed."""
    seeds: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise GridError(f"bad seed range {spec!r} (expected e.g. 0-9 or 0,2,5-7)")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise GridError(f"bad seed range {part!r}: end before start")
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


def parse_overrides(items: Iterable[str]) -> list[tuple[str, str]]:
    """[`key=value`, ...] -> [(key, value)]; GridError on an item without `=`."""
    out = []
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise GridError(f"bad override {item!r} (expected key=value)")
        out.append((key, value.strip()))
    return out


def expand_grid_overrides(grid_items: Iterable[str]) -> list[list[tuple[str, str]]]:
    """[`lr=1e-4,3e-4`, `K=3,5`] -> the cartesian product as lists of (key, value)."""
    axes = []
    for key, values in parse_overrides(grid_items):
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise GridError(f"grid axis {key!r} has no values")
        axes.append([(key, v) for v in vals])
    return [list(p) for p in itertools.product(*axes)] if axes else [[]]


def make_label(config: str, overrides: Sequence[tuple[str, str]]) -> str:
    """`spr` + [(lr, 1e-4)] -> `spr+lr=1e-4` (filesystem-safe)."""
    label = "+".join([config] + [f"{k}={v}" for k, v in overrides])
    return _LABEL_CHARS.sub("_", label)


def run_dir(root: Path | str, label: str, game: str, seed: int) -> Path:
    return Path(root) / label / game / f"seed_{seed}"


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One run of a sweep: which configuration, game (or joint game list), seed and overrides."""

    label: str
    config: str
    game: str  # snake_case, or JOINT for a multi-game pretraining run
    seed: int
    overrides: tuple[tuple[str, str], ...] = ()
    games: tuple[str, ...] = ()  # the games of a JOINT run


@dataclasses.dataclass
class SweepDef:
    """What a sweep asks for (saved as ROOT/<label>/sweep.json for --status and the report)."""

    configs: list[str]
    games: list[str]
    seeds: list[int]
    fixed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # --set
    grid: list[str] = dataclasses.field(default_factory=list)  # --grid axes
    entry: str = "train"  # train | pretrain
    joint: bool = False  # pretrain: one run over all games per seed
    init_from: str = ""  # finetuning: template with {label} {config} {game} {ale_game} {seed}
    name: str = ""  # explicit label (only with one config and no grid)
    data_dir: str = ""  # pretrain: launch.pretrain --data_dir (a path, not part of the label)

    def points(self) -> list[GridPoint]:
        if not self.configs:
            raise GridError("no configuration given (--config)")
        grid_points = expand_grid_overrides(self.grid)
        if self.name and (len(self.configs) > 1 or len(grid_points) > 1):
            raise GridError("--name needs a single configuration and no --grid")
        pts = []
        for config, swept in itertools.product(self.configs, grid_points):
            overrides = tuple(list(self.fixed) + list(swept))
            label = self.name or make_label(config, overrides)
            if self.joint:
                pts += [GridPoint(label, config, JOINT, s, overrides, tuple(self.games)) for s in self.seeds]
            else:
                pts += [GridPoint(label, config, g, s, overrides) for g in self.games for s in self.seeds]
        return pts


def write_manifest(root: Path, label: str, sweep: SweepDef, points: Sequence[GridPoint], extra: dict) -> Path:
    """ROOT/<label>/sweep.json: the games and seeds asked for (merged with earlier sweeps)."""
    path = Path(root) / label / "sweep.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = read_manifest(path.parent) or {}
    mine = [p for p in points if p.label == label]
    games = list(dict.fromkeys(list(old.get("games", [])) + [p.game for p in mine]))
    seeds = sorted(set(old.get("seeds", [])) | {p.seed for p in mine})
    data = {
        "label": label,
        "config": mine[0].config if mine else old.get("config"),
        "overrides": [list(o) for o in (mine[0].overrides if mine else ())],
        "entry": sweep.entry,
        "joint": sweep.joint,
        "init_from": sweep.init_from,
        "data_dir": sweep.data_dir,
        "games": games,
        "seeds": seeds,
        **extra,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    return path


def read_manifest(label_dir: Path) -> dict | None:
    path = Path(label_dir) / "sweep.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
