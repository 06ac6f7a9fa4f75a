"""Sweep grids: game names, seed ranges, run labels and the workdir layout.

Layout of a sweep root (one workdir per run, see docs/CONTRACTS.md):

    ROOT/<label>/<Game>/seed_<seed>/      config.json, metrics.jsonl, eval.csv, final.json, ...
    ROOT/<label>/sweep.json               what was asked: config, overrides, games, seeds
    ROOT/<label>/joint/seed_<seed>/       multi-game pretraining (one run over all games)

`label` is the configuration name plus its overrides (`spr`, `spr+lr=0.0003+steps=10000`):
runs with different overrides never share a workdir, so a smoke test cannot be mistaken for
(or skipped in place of) a full run. `<Game>` is the game's canonical name (`MsPacman`, as
`launch.train --games=... --workdir=ROOT/<label>` writes it); workdirs of older sweeps, named
by ROM id (`ms_pacman`), are still found (`run_dir`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from envs import games

BUDGET_100K = 100_000  # agent steps of the Atari 100k benchmark
JOINT = "joint"  # game directory of a multi-game (joint) pretraining run
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9._=+-]")


class GridError(ValueError):
  """Bad sweep input (unknown game, bad seed range, ...): a one-line message."""


# --------------------------------------------------------------------------------------------
# Games (envs.games is the table) and seeds
# --------------------------------------------------------------------------------------------
def atari_game(name: str) -> str:
  """The canonical name (`envs.games.canonical_name`: `ms_pacman` -> `MsPacman`) of one of the
  26 Atari 100k games, in any spelling; GridError for another name (Catch included: sweeps and
  reports are Atari 100k results)."""
  try:
    if games.is_atari(name):
      return games.canonical_name(name)
  except ValueError:
    pass
  raise GridError(f"unknown game {name!r} (expected one of the 26 Atari 100k games)")


def game_name(name: str) -> str:
  """A game folder or a sweep.json entry as the game's canonical name; another name (`joint`,
  a non-Atari game) as written. Older sweeps wrote folders by ROM id (`ms_pacman`)."""
  try:
    return atari_game(name)
  except GridError:
    return name


def rom_id(name: str) -> str:
  """An Atari game's ROM id (`ms_pacman`): its folder name in sweeps written before folders
  used the canonical name. Another name as written."""
  try:
    return games.get_game(name).rom
  except ValueError:
    return name


def parse_games(spec: str) -> list[str]:
  """`all` or a comma list of names (any spelling) -> canonical names, no duplicates."""
  spec = spec.strip()
  if spec.lower() == "all":
    return list(games.GAMES)
  names = [s.strip() for s in spec.split(",") if s.strip()]
  if not names:
    raise GridError("no games given (use --games=all or a comma list)")
  return list(dict.fromkeys(atari_game(n) for n in names))


def parse_seeds(spec: str) -> list[int]:
  """`0-9`, `3`, `0,2,5-7` (spaces and empty items ignored) -> the seeds in the order given.

  Raises:
      GridError: a malformed item, a range that ends before it starts, a seed given twice (two
          runs would share a workdir), or no seed at all.
  """
  seeds: list[int] = []
  for part in str(spec).split(","):
    part = part.strip()
    if not part:
      continue
    m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
    if not m:
      raise GridError(f"bad seed range {part!r} in {spec!r} (expected e.g. 0-9 or 0,2,5-7)")
    lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
    if hi < lo:
      raise GridError(f"bad seed range {part!r}: end before start")
    seeds.extend(range(lo, hi + 1))
  if not seeds:
    raise GridError(f"no seeds in {spec!r} (expected e.g. 0-9 or 0,2,5-7)")
  twice = sorted({s for s in seeds if seeds.count(s) > 1})
  if twice:
    raise GridError(f"seed(s) {', '.join(map(str, twice))} given twice in {spec!r}")
  return seeds


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
  """ROOT/<label>/<Game>/seed_<seed>, the game by its canonical name as `launch.train --games`
  writes it. A workdir an older sweep wrote under the game's ROM id (`ms_pacman`) is returned
  when only that one exists, so the run is resumed, skipped or reported, not started again."""
  path = Path(root) / label / game_name(game) / f"seed_{seed}"
  older = Path(root) / label / rom_id(game) / path.name
  return older if older.is_dir() and not path.exists() else path


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GridPoint:
  """One run of a sweep: which configuration, game (or joint game list), seed and overrides."""

  label: str
  config: str
  game: str  # canonical name (`MsPacman`), or JOINT for a multi-game pretraining run
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
  init_from: str = ""  # finetuning: template with {label} {config} {game} {seed}
  name: str = ""  # explicit label (only with one config and no grid)
  data_dir: str = ""  # pretrain: launch.pretrain --data_dir (a path, not part of the label)

  def points(self) -> list[GridPoint]:
    if not self.configs:
      raise GridError("no configuration given (--config)")
    grid_points = expand_grid_overrides(self.grid)
    if self.name and (len(self.configs) > 1 or len(grid_points) > 1):
      raise GridError("--name needs a single configuration and no --grid")
    names = [game_name(g) for g in self.games]
    pts = []
    for config, swept in itertools.product(self.configs, grid_points):
      overrides = tuple(list(self.fixed) + list(swept))
      label = self.name or make_label(config, overrides)
      if self.joint:
        pts += [GridPoint(label, config, JOINT, s, overrides, tuple(names)) for s in self.seeds]
      else:
        pts += [GridPoint(label, config, g, s, overrides) for g in names for s in self.seeds]
    return pts


def write_manifest(
    root: Path, label: str, sweep: SweepDef, points: Sequence[GridPoint], extra: dict
) -> Path:
  """ROOT/<label>/sweep.json: the games and seeds asked for (merged with earlier sweeps)."""
  path = Path(root) / label / "sweep.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  old = read_manifest(path.parent) or {}
  mine = [p for p in points if p.label == label]
  earlier = [game_name(g) for g in old.get("games", [])]  # older sweeps: ROM ids
  asked = list(dict.fromkeys(earlier + [p.game for p in mine]))
  seeds = sorted(set(old.get("seeds", [])) | {p.seed for p in mine})
  data = {
      "label": label,
      "config": mine[0].config if mine else old.get("config"),
      "overrides": [list(o) for o in (mine[0].overrides if mine else ())],
      "entry": sweep.entry,
      "joint": sweep.joint,
      "init_from": sweep.init_from,
      "data_dir": sweep.data_dir,
      "games": asked,
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
