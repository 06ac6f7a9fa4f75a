"""Typed command-line overrides for dataclass configs (shared by every agent's config)."""
from __future__ import annotations

import dataclasses
from typing import Any


def parse_override(config_cls: type, name: str, text: str) -> Any:
  """Parses override `text` for field `name` of the dataclass `config_cls` into its type.

  bool accepts 1/0, true/false, yes/no; int accepts integral floats ("1e5"); a tuple of ints is
  written "32,64,64". Raises ValueError with a one-line message naming the flag when malformed.
  """
  fields = {f.name: f for f in dataclasses.fields(config_cls)}
  if name not in fields:
    raise ValueError(f"unknown setting {name!r}")
  default = fields[name].default
  try:
    if isinstance(default, bool):
      low = text.strip().lower()
      if low in ("1", "true", "yes"):
        return True
      if low in ("0", "false", "no"):
        return False
      raise ValueError(text)
    if isinstance(default, int):
      value = float(text)
      if value != int(value):
        raise ValueError(text)
      return int(value)
    if isinstance(default, float):
      return float(text)
    if isinstance(default, tuple):
      return tuple(int(v) for v in text.replace("(", "").replace(")", "").split(",") if v.strip())
    return text
  except ValueError:
    kind = type(default).__name__
    raise ValueError(f"malformed value {text!r} for --{name} (expected {kind})") from None


def make_named(config_cls: type, named: dict[str, dict[str, Any]], name: str,
               overrides: dict[str, Any] | None = None):
  """`config_cls` built from the named configuration `name` plus typed `overrides`, validated
  (the class must have a `validate()` that returns the instance or raises ValueError)."""
  if name not in named:
    raise ValueError(f"unknown config {name!r}; valid: {', '.join(sorted(named))}")
  values = dict(named[name])
  values.update(overrides or {})
  return config_cls(**values).validate()


def from_json(config_cls: type, data: dict[str, Any]):
  """Rebuilds a config from its config.json dict (lists back to tuples, other keys ignored)."""
  names = {f.name for f in dataclasses.fields(config_cls)}
  return config_cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()
                       if k in names})
