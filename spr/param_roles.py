"""One table of parameter roles: which part of the network each Haiku module is.

Every rule that treats parameters by part reads it: gradient clipping (`grouped_clip`, the SPR and
SGI code's two clip groups), SGI finetuning's learning-rate groups and the modules it loads, and
BBF's shrink-and-perturb resets. A new module gets its role here, once.

Roles:
  encoder     the convolutional encoder (Nature CNN, Impala, SGI ResNets)
  transition  the transition model
  head_first  the first layer of the Q head: both dueling streams' hidden layers (SGI's q_l1,
              which is also SPR's projection) or BBF's shared layer
  head        every other Q / goal head layer
  predictor   the SPR predictor
  inverse     SGI's inverse dynamics model
"""

from __future__ import annotations

from typing import Any, Callable

import optax

ROLES = ("encoder", "transition", "head_first", "head", "predictor", "inverse")


def role(module_name: str) -> str:
  """The role of a Haiku module, from its name (e.g. "spr/~/encoder/conv0")."""
  if "/encoder" in module_name or module_name.startswith("encoder"):
    return "encoder"
  if "/transition" in module_name or module_name.startswith("transition"):
    return "transition"
  if module_name.endswith("predictor"):
    return "predictor"
  if module_name.endswith(("inverse_hidden", "inverse_out")):
    return "inverse"
  if module_name.endswith(("value_hidden", "advantage_hidden", "shared_hidden")):
    return "head_first"
  return "head"


def labels(params: Any, label_of: Callable[[str], str]) -> Any:
  """A pytree like `params` ({module: {name: array}}) of `label_of(role(module))`."""
  return {m: {k: label_of(role(m)) for k in leaves} for m, leaves in params.items()}


# ---------------------------------------------------------------- the rules that read the table
def clip_group(r: str) -> str:
  """The SPR / SGI code's clip groups (src/algos.py optimize_agent): the transition model alone;
  the predictor and the inverse model unclipped; the rest ("stem": encoder and heads) together."""
  if r == "transition":
    return "transition"
  return "unclipped" if r in ("predictor", "inverse") else "stem"


def lr_group(r: str) -> str:
  """SGI finetuning's learning-rate groups (mila-iqia/SGI src/models.py `list_params`): encoder,
  first head layer, the rest (transition model included)."""
  return r if r in ("encoder", "head_first") else "rest"


def shrink_perturbed(r: str) -> bool:
  """BBF's reset shrinks and perturbs these ("encoder,transition_model"); the rest starts fresh."""
  return r in ("encoder", "transition")


def finetuning_reuses(r: str) -> bool | tuple[str, ...]:
  """What SGI finetuning copies from the pretrained network: everything of the encoder,
  transition model and predictor; the mean weights of the first head layer; nothing else."""
  if r in ("encoder", "transition", "predictor"):
    return True
  return ("w_mu", "b_mu") if r == "head_first" else False


def grouped_clip(max_norm: float) -> optax.GradientTransformation:
  """Gradient-norm clipping as the SPR and SGI code: each clip group (`clip_group`) clipped to
  `max_norm` by its own global norm; the predictor and the inverse model not at all."""
  return optax.multi_transform(
      {
          "stem": optax.clip_by_global_norm(max_norm),
          "transition": optax.clip_by_global_norm(max_norm),
          "unclipped": optax.identity(),
      },
      lambda params: labels(params, clip_group),
  )
