"""Loading a pretrained SGI encoder into an SPR run (`launch.train --init_from=W`).

What is copied (mila-iqia/SGI: the finetuning model loads the whole pretrained state dict, then
`head.copy_base_params(up_to=1)` copies the goal head's first layers into the RL head and
`reset_noise_params` re-initialises every noisy sigma): the encoder (with its BatchNorm running
statistics), the transition model, the predictor and the first layer of both dueling streams
(value_hidden / advantage_hidden mean weights; their noise sigmas keep the fresh init). The
output layers of the Q head start fresh. The EMA target, when the run has one, starts from the
pretrained EMA target (SGI's state dict holds target_encoder / target_projection too) where the
checkpoint has one, else as a copy of the loaded online parameters.

Action sets: a network pretrained on the full 18-action set (`launch.pretrain
--full_action_set`, for games with different minimal action sets) finetunes in the 100k protocol's
minimal action set: the transition model's action planes are sliced to the game's actions (the
same function for every action the game has).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spr import checkpoint, param_roles
from spr.networks import SGI_ENCODERS

PRETRAINED = "pretrained.npz"
LEGACY_PRETRAINED = "pretrained.pkl"  # a pickle: read only with SPR_ALLOW_PICKLE=1
# Fields of the pretraining config that must equal the finetuning config's.
MATCHED = ("encoder", "encoder_channels", "resnet_norm", "hidden", "transition_hidden")
TRANSITION_INPUT = "transition/conv0"  # its input planes: latent channels, then one per action


class PretrainedMismatch(ValueError):
  """The pretrained checkpoint does not fit this run (message says why, in one line)."""


def load_pretrained(init_from: str | Path, allow_pickle: bool | None = None) -> dict:
  """The pretrained network of `init_from` (a launch.pretrain workdir or its pretrained.npz),
  verified against its checksums. Loading runs no code: a pickle (`pretrained.pkl` of older
  versions) is read only with `allow_pickle` / SPR_ALLOW_PICKLE=1 (spr/checkpoint.py).

  Raises:
    PretrainedMismatch (one line: what is wrong with the file, or how to opt in to a pickle).
  """
  path = Path(init_from)
  if path.is_dir():
    legacy = path / LEGACY_PRETRAINED
    path = path / PRETRAINED
    if not path.exists() and legacy.exists():
      path = legacy
  if not path.exists():
    raise PretrainedMismatch(f"--init_from: {path} does not exist (run launch.pretrain first)")
  try:
    payload = checkpoint.read_file(path, "pretrained", allow_pickle)["content"]
    payload["params"], payload["config"], payload["num_actions"]  # noqa: B018 - presence check
  except checkpoint.CheckpointError as e:  # a pickle, damaged, or another kind of file
    raise PretrainedMismatch(f"--init_from: {e}") from None
  except Exception as e:  # noqa: BLE001 - not a pretrained file
    raise PretrainedMismatch(
        f"--init_from: {path} is not a usable pretrained checkpoint " f"({type(e).__name__}: {e})"
    ) from None
  payload["path"] = str(path)
  return payload


def _reused(module: str) -> list[str] | None:
  """Parameter names of `module` that finetuning copies ([]: all), or None if it starts fresh
  (`spr.param_roles.finetuning_reuses`)."""
  reuse = param_roles.finetuning_reuses(param_roles.role(module))
  if reuse is True:
    return []
  return list(reuse) if reuse else None


def _action_set(payload: dict) -> list[int]:
  """ALE action ids of the pretrained network's action indices (older exports: 0..A-1)."""
  return [int(a) for a in payload.get("action_set", range(int(payload["num_actions"])))]


def _rows(payload: dict, game_actions: Sequence[int]) -> list[int]:
  """The pretrained action index of each of the game's actions."""
  if "action_set" not in payload:
    return list(range(len(game_actions)))
  trained = _action_set(payload)
  return [trained.index(a) for a in game_actions]


def check_compatible(payload: dict, config: Any, game_actions: Sequence[int]) -> None:
  """Raises PretrainedMismatch unless the pretrained network fits this run's config and game.

  `game_actions`: the ALE action ids of the game's minimal action set (`AtariEnv.action_set`).
  """
  where = payload.get("path", "pretrained checkpoint")
  pre = payload["config"]
  trained = _action_set(payload)
  if "action_set" not in payload:
    if len(trained) != len(game_actions):
      raise PretrainedMismatch(
          f"{where} was pretrained with {len(trained)} actions "
          f"({', '.join(payload.get('games', []))}), this game has {len(game_actions)}"
      )
  elif list(trained) != list(game_actions) and sorted(trained) != list(range(18)):
    # The same action set, or the full one (sliced to the game's actions); nothing in between:
    # a subset match across games is far likelier a wrong --init_from than intended.
    raise PretrainedMismatch(
        f"{where} was pretrained on ALE actions {trained} "
        f"({', '.join(payload.get('games', []))}), this game has {list(game_actions)}: "
        "pretrain on this game, or with --full_action_set"
    )
  for name in MATCHED:
    if name == "resnet_norm" and config.encoder not in SGI_ENCODERS:
      continue  # only the SGI ResNets have it
    want = getattr(config, name)
    have = pre.get(name, "layer" if name == "resnet_norm" else None)  # older exports
    if isinstance(want, tuple):
      have = tuple(have or ())
    if want != have:
      flag = ",".join(str(v) for v in have) if isinstance(have, tuple) else have
      fix = f"pass --{name}={flag}"
      if name == "encoder" and have in SGI_ENCODERS:
        fix = f"use --config=sgi (the SGI-M encoder) or pass --encoder={have}"
      raise PretrainedMismatch(
          f"{where} was pretrained with {name}={have!r}, this run has " f"{name}={want!r}: {fix}"
      )


def _copy_reused(fresh: Any, source: dict, where: str, rows: list[int]) -> tuple[dict, int]:
  """`fresh` (a parameter dict) with the reused modules taken from `source`; the transition
  model's action planes are the pretrained planes `rows` (the game's actions)."""
  out = {m: dict(leaves) for m, leaves in fresh.items()}
  copied = 0
  for module, leaves in fresh.items():
    names = _reused(module)
    if names is None:
      continue
    if module not in source:
      raise PretrainedMismatch(f"{where} has no module {module} (another architecture)")
    for name in names or list(leaves):
      src = np.asarray(source[module].get(name))
      if module.endswith(TRANSITION_INPUT) and name == "w" and src.ndim == 4:
        channels = src.shape[2] - _planes(source, module)
        src = np.concatenate([src[:, :, :channels], src[:, :, channels + np.asarray(rows)]], axis=2)
      if src.shape != tuple(leaves[name].shape):
        raise PretrainedMismatch(
            f"{where}: {module}/{name} is {list(src.shape)}, this run "
            f"needs {list(leaves[name].shape)}"
        )
      out[module][name] = jnp.asarray(src, leaves[name].dtype)
      copied += 1
  return out, copied


def _planes(source: dict, module: str) -> int:
  """Action planes of the pretrained transition input: its input channels minus the latent's
  (the output channels of the transition model's last conv = latent channels)."""
  last = module.replace("conv0", "conv1")
  return int(np.asarray(source[module]["w"]).shape[2] - np.asarray(source[last]["w"]).shape[3])


def apply_pretrained(params: Any, payload: dict, config: Any, game_actions: Sequence[int]) -> Any:
  """Returns `params` (a fresh SPR network's) with the pretrained parts copied in."""
  check_compatible(payload, config, game_actions)
  where = payload.get("path", "pretrained checkpoint")
  out, copied = _copy_reused(params, payload["params"], where, _rows(payload, game_actions))
  if not copied:
    raise PretrainedMismatch(f"{where}: nothing to load")
  return out


def load_into_state(learner: Any, state: Any, payload: dict, game_actions: Sequence[int]) -> Any:
  """A fresh SPR `TrainState` with the pretrained parameters, BatchNorm running statistics and
  (for an EMA target) the pretrained target loaded;
  the optimiser state is kept: freshly initialised, it holds no parameter values."""
  config = learner.config
  where = payload.get("path", "pretrained checkpoint")
  params = apply_pretrained(jax.device_get(state.params), payload, config, game_actions)
  norm_state = _load_norm_state(state.norm_state, payload.get("norm_state"), where)
  pretrained_target = bool(payload.get("target_params"))

  def target_params(_):  # the pretrained EMA target, else a copy of the loaded online network
    if not pretrained_target:
      return jax.tree.map(jnp.array, params)
    target, _ = _copy_reused(params, payload["target_params"], where, _rows(payload, game_actions))
    return jax.tree.map(jnp.array, target)

  def target_norm_state(fresh):
    if not pretrained_target:
      return jax.tree.map(jnp.array, norm_state)
    return jax.tree.map(jnp.array, _load_norm_state(fresh, payload.get("target_norm_state"), where))

  # Without a stored target (the learner's `target` rule is OnlineTarget) both stay ().
  target = learner.target.map(target_params, state.target_params)
  target_norm = learner.target.map(target_norm_state, state.target_norm_state)
  return state._replace(
      params=jax.device_put(params),
      target_params=jax.device_put(target),
      norm_state=jax.device_put(norm_state),
      target_norm_state=jax.device_put(target_norm),
  )


def _load_norm_state(fresh: Any, saved: dict | None, where: str) -> Any:
  """The fresh running statistics with the pretrained encoder's copied in (by module name)."""
  if not jax.tree.leaves(fresh):
    return fresh
  if not saved:
    raise PretrainedMismatch(
        f"{where} has no BatchNorm running statistics (pretrained with " "another resnet_norm)"
    )
  out = {}
  for module, leaves in fresh.items():
    if module not in saved:
      raise PretrainedMismatch(f"{where} has no running statistics for {module}")
    out[module] = {k: jnp.asarray(saved[module][k], v.dtype) for k, v in leaves.items()}
  return out
