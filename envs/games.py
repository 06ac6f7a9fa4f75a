"""The 26 Atari 100k games, their reference score tables and human-normalised scores.

Names: each game has an ALE name (``MsPacman``, as in ``ALE/MsPacman-v5``) and a ROM id
(``ms_pacman``, what ale-py's ROM loader takes). :func:`get_game` accepts either, in any case,
with or without underscores (``ms_pacman``, ``mspacman``, ``MsPacman``, ``MSPACMAN``), and the
gymnasium id (``ALE/MsPacman-v5``).

Scores come from ``scores.csv`` (package data, a copy of the project's reference table):
random and human scores (for normalisation) and the published DER, SPR and BBF per-game means.

Non-Atari games: :data:`NON_ATARI_GAMES` (``Catch``, bsuite's Catch as 84x84 frames, a pixel
sanity task: :mod:`envs.catch`) are known to :func:`canonical_name` and :func:`make_env`, so the
trainers and the evaluation run them (``--game=catch``), but they are not in :data:`GAMES` nor
in the score tables: :func:`get_game`, the scores and :func:`human_normalized_score` refuse
them (ValueError), and :func:`is_atari` tells them apart. A run's final.json has ``hns`` NaN
for them, and sweeps (``launch.grid``) and reports (``launch.report``), which know only the 26
games, refuse them or never mix them into per-game tables or aggregates.

This module is the project's one game table: folders, flags and final.json name a game by
:func:`canonical_name`; the score tables (and a report's per-game rows) by its ROM id, the
``game`` column of ``scores.csv`` (:func:`read_scores` reads that file or another in its format).

One factory builds every env a trainer or an evaluation plays: :func:`make_env` (an
``envs.catch.CatchEnv`` for a non-Atari game, else an ``envs.atari.AtariEnv``).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import pathlib
import re

_SCORES_CSV = pathlib.Path(__file__).with_name("scores.csv")


@dataclasses.dataclass(frozen=True)
class Game:
  """One Atari 100k game and its reference scores (raw game score units)."""

  name: str  # ALE name, e.g. "MsPacman"
  rom: str  # ale-py ROM id, e.g. "ms_pacman"
  ale_id: str  # gymnasium id, e.g. "ALE/MsPacman-v5"
  random: float
  human: float
  der: float  # published DER (data-efficient Rainbow) 100k score
  spr: float  # published SPR 100k score
  bbf: float  # published BBF 100k score


def _normalise_key(name: str) -> str:
  """Lookup key: case and underscores/dashes/spaces do not matter, and a gymnasium id
  (``ALE/MsPacman-v5``) is its game."""
  base = re.sub(r"-v\d+$", "", name.strip().split("/")[-1])
  return "".join(ch for ch in base.lower() if ch.isalnum())


def read_scores(path: str | pathlib.Path | None = None) -> tuple[Game, ...]:
  """The games of a score table in ``scores.csv``'s format (columns game, ale_id, random, human,
  DER, SPR, BBF), in file order; by default the project's table.

  Raises:
      OSError: the file cannot be read.
      ValueError: a row misses a column or holds a score that is not a number.
  """
  games = []
  with open(path or _SCORES_CSV, newline="") as f:
    for row in csv.DictReader(f):
      try:
        ale_id = row["ale_id"]
        games.append(
            Game(
                # "ALE/MsPacman-v5" -> "MsPacman"
                name=ale_id.split("/")[-1].rsplit("-v", 1)[0],
                rom=row["game"].strip(),
                ale_id=ale_id,
                random=float(row["random"]),
                human=float(row["human"]),
                der=float(row["DER"]),
                spr=float(row["SPR"]),
                bbf=float(row["BBF"]),
            )
        )
      except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path or _SCORES_CSV}: bad row {row} ({e!r})") from None
  return tuple(games)


@functools.cache
def _load_games() -> dict[str, Game]:
  """Reads scores.csv once; returns {normalised key: Game}, in table order."""
  return {_normalise_key(game.name): game for game in read_scores()}


GAMES: tuple[str, ...] = tuple(g.name for g in _load_games().values())
"""The 26 Atari 100k games by ALE name, in the table's (alphabetical) order."""

NON_ATARI_GAMES: tuple[str, ...] = ("Catch",)
"""Games that are not Atari games (no ROM, no reference scores): envs.catch's Catch."""

_NON_ATARI = {_normalise_key(name): name for name in NON_ATARI_GAMES}


def is_atari(name: str) -> bool:
  """Whether ``name`` (any accepted spelling) is one of the 26 Atari 100k games.

  Raises:
      ValueError: the name is neither an Atari 100k game nor a non-Atari game.
  """
  return _normalise_key(canonical_name(name)) in _load_games()


def get_game(name: str) -> Game:
  """Looks a game up by ALE name or ROM id (case-insensitive, snake_case accepted).

  Raises:
      ValueError: the name is not one of the 26 Atari 100k games (a non-Atari game such as
          "catch" included: it has no ROM and no scores); the message lists them.
  """
  game = _load_games().get(_normalise_key(name))
  if game is None:
    if _normalise_key(name) in _NON_ATARI:
      raise ValueError(
          f"{_NON_ATARI[_normalise_key(name)]} is not an Atari 100k game: it has no ROM "
          f"and no reference scores (Atari 100k games: {', '.join(GAMES)})."
      )
    raise ValueError(
        f"Unknown Atari 100k game {name!r}. Valid names: {', '.join(GAMES)} "
        "(case-insensitive; snake_case such as 'ms_pacman' is accepted); non-Atari games: "
        f"{', '.join(NON_ATARI_GAMES)}."
    )
  return game


def canonical_name(name: str) -> str:
  """The name of a game given any accepted spelling: the ALE name of an Atari game
  ("ms_pacman" -> "MsPacman"), or a non-Atari game's ("catch" -> "Catch").

  Raises:
      ValueError: an unknown game (the message lists the valid names).
  """
  non_atari = _NON_ATARI.get(_normalise_key(name))
  if non_atari is not None:
    return non_atari
  return get_game(name).name


def make_env(game: str, seed: int = 0, **kwargs):
  """The env that plays ``game``: ``envs.catch.CatchEnv`` for Catch, else
  ``envs.atari.AtariEnv``, built with ``(game, seed=seed, **kwargs)`` (the ``AtariEnv``
  keyword arguments: training, sticky, noop_max, max_frames_per_episode, protocol, horizon;
  CatchEnv accepts them all and refuses the values that would change Catch).

  Every env a trainer or an evaluation plays is built here (agents/spr/trainer.py,
  agents/spr/multi_trainer.py, and the env pool's workers, envs/pool_worker.py).
  """
  # Imported here: envs.atari (which envs.catch imports) imports this module.
  if canonical_name(game) == "Catch":
    from envs.catch import CatchEnv

    return CatchEnv(game, seed=seed, **kwargs)
  from envs.atari import AtariEnv

  return AtariEnv(game, seed=seed, **kwargs)


def random_score(game: str) -> float:
  """The random-policy reference score used for normalisation."""
  return get_game(game).random


def human_score(game: str) -> float:
  """The human reference score used for normalisation."""
  return get_game(game).human


def human_normalized_score(game: str, score: float) -> float:
  """HNS = (score - random) / (human - random): 0 is random play, 1 is human level."""
  g = get_game(game)
  return (float(score) - g.random) / (g.human - g.random)


def published_score(game: str, method: str) -> float:
  """The published 100k score of ``method`` ("DER", "SPR" or "BBF", any case) on ``game``."""
  key = method.lower()
  if key not in ("der", "spr", "bbf"):
    raise ValueError(f"Unknown method {method!r}; expected one of DER, SPR, BBF.")
  return getattr(get_game(game), key)
