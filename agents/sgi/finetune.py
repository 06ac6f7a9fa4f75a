"""Loading a pretrained SGI encoder into an SPR run (`launch.train --init_from=W`).

What is copied (mila-iqia/SGI: the finetuning model loads the whole pretrained state dict, then
`head.copy_base_params(up_to=1)` copies the goal head's first layers into the RL head and
`reset_noise_params` re-initialises every noisy sigma): the encoder, the transition model, the
predictor and the first layer of both dueling streams (value_hidden / advantage_hidden mean
weights; their noise sigmas keep the fresh init). The output layers of the Q head start fresh.
The EMA target, when the run has one, starts as a copy of the loaded online parameters.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

PRETRAINED = "pretrained.pkl"
# Fields of the pretraining config that must equal the finetuning config's.
MATCHED = ("encoder", "encoder_channels", "hidden", "transition_hidden")


class PretrainedMismatch(ValueError):
  """The pretrained checkpoint does not fit this run (message says why, in one line)."""


def load_pretrained(init_from: str | Path) -> dict:
  path = Path(init_from)
  if path.is_dir():
    path = path / PRETRAINED
  if not path.exists():
    raise PretrainedMismatch(f"--init_from: {path} does not exist (run launch.pretrain first)")
  try:
    with open(path, "rb") as f:
      payload = pickle.load(f)
    payload["params"], payload["config"], payload["num_actions"]  # noqa: B018 - presence check
  except Exception as e:  # noqa: BLE001
    raise PretrainedMismatch(f"--init_from: {path} is not a pretrained checkpoint "
                             f"({type(e).__name__}: {e})") from None
  payload["path"] = str(path)
  return payload


def _reused(module: str) -> list[str] | None:
  """Parameter names of `module` that finetuning copies, or None if it starts fresh."""
  if "/encoder" in module or "/transition" in module or module.endswith("predictor"):
    return []  # all
  if module.endswith(("value_hidden", "advantage_hidden")):
    return ["w_mu", "b_mu"]
  return None


def check_compatible(payload: dict, config: Any, num_actions: int) -> None:
  """Raises PretrainedMismatch unless the pretrained network fits this run's config and game."""
  where = payload.get("path", "pretrained checkpoint")
  pre = payload["config"]
  if int(payload["num_actions"]) != int(num_actions):
    raise PretrainedMismatch(
        f"{where} was pretrained with {payload['num_actions']} actions "
        f"({', '.join(payload.get('games', []))}), this game has {num_actions}")
  for name in MATCHED:
    want, have = getattr(config, name), pre.get(name)
    if isinstance(want, tuple):
      have = tuple(have or ())
    if want != have:
      raise PretrainedMismatch(f"{where} was pretrained with {name}={have!r}, this run has "
                               f"{name}={want!r}")


def apply_pretrained(params: Any, payload: dict, config: Any, num_actions: int) -> Any:
  """Returns `params` (a fresh SPR network's) with the pretrained parts copied in."""
  check_compatible(payload, config, num_actions)
  where = payload.get("path", "pretrained checkpoint")
  out = {m: dict(leaves) for m, leaves in params.items()}
  copied = 0
  for module, leaves in params.items():
    names = _reused(module)
    if names is None:
      continue
    if module not in payload["params"]:
      raise PretrainedMismatch(f"{where} has no module {module} (another architecture)")
    for name in (names or list(leaves)):
      src = np.asarray(payload["params"][module].get(name))
      if src.shape != tuple(leaves[name].shape):
        raise PretrainedMismatch(f"{where}: {module}/{name} is {list(src.shape)}, this run "
                                 f"needs {list(leaves[name].shape)}")
      out[module][name] = jnp.asarray(src, leaves[name].dtype)
      copied += 1
  if not copied:
    raise PretrainedMismatch(f"{where}: nothing to load")
  return out
