"""Safe, verified, atomic checkpoints of pytrees plus host-side state, and the same format for
any other artifact of numpy arrays and plain data (the SGI `pretrained.npz`).

Format (FORMAT_VERSION 2). One uncompressed `.npz` file (a zip of `.npy` arrays), written by
`np.savez` and read by `np.load(..., allow_pickle=False)`:
  - `a0`, `a1`, ...: every array of the content (pytree leaves, env screens, the ALE's
    serialized state as uint8 bytes, numpy scalars as 0-d arrays);
  - `__meta__`: a uint8 array holding UTF-8 JSON: `format` ("spr-npz"), `kind` ("checkpoint",
    "pretrained"), `version`, `config` (the run's resolved settings, or null), `arrays` (for
    each array: where it sits in the content, dtype, shape and the sha256 of its bytes) and
    `content`: the payload with every array replaced by a reference to its name (see `encode`).
A checkpoint's content is `{"step": int, "leaves": [arrays], "host": {...}}`.

Why this format. Loading it cannot run code: `np.load` with allow_pickle=False parses `.npy`
headers with `ast.literal_eval` and refuses object arrays, the JSON parser builds only plain data,
and `decode` turns that into a fixed set of types (a pickle, which checkpoints and pretrained
files used to be, runs whatever its `__reduce__` says when loaded). It round-trips exactly:
dtypes, shapes and bytes of arrays; Python int (of any size: numpy's RNG states hold 128-bit
ints), float (JSON writes `repr`), bool, None, str, bytes, tuples and dict key order - what
exact resume needs (the emulator's state is bytes, the RNG states are dicts of ints). It is one
file, so the usual atomic write (temporary file, fsync, rename) covers the whole checkpoint. It
needs nothing beyond numpy: safetensors holds flat arrays only (host state would need a second
file and format), orbax adds async / sharding machinery and a directory per checkpoint that a
single-host run does not need.

Verification. Every array's sha256 (and dtype and shape) is recorded when written and checked when
read; the zip's CRC-32 also covers every member, `__meta__` included. A damaged or truncated
checkpoint is reported by name (logging.warning) and `restore` falls back to the previous one,
saying so.

Legacy pickles. Checkpoints (`ckpt_<step>.pkl`) and pretrained files (`pretrained.pkl`) written
before this format are pickles: they are read only when the caller passes allow_pickle=True or
the environment sets SPR_ALLOW_PICKLE=1 (for files you trust; loading a pickle runs any code it
holds). A pickle found where an `.npz` is expected is always refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging

FORMAT = "spr-npz"
FORMAT_VERSION = 2  # 1: pickle files (read only with the opt-in)
ALLOW_PICKLE_ENV = "SPR_ALLOW_PICKLE"
SUFFIX = ".npz"
LEGACY_SUFFIX = ".pkl"
_NAME = re.compile(r"^ckpt_(\d+)\.(npz|pkl)$")
_META = "__meta__"
_TAG = "$t"  # marks an encoded value in the JSON (a dict holding this key is itself encoded)
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one that does not fit the caller (message says why)."""


class DamagedFileError(CheckpointError):
  """A file that is truncated, unreadable or fails its checksums (message names what failed)."""


class UnsafeFileError(CheckpointError):
  """A pickle where a safe file is expected, or a legacy pickle without the opt-in."""


class Restored(NamedTuple):
  step: int
  tree: Any  # the template's structure with numpy leaves
  host: dict
  config: dict | None  # the settings the checkpoint was written with (None: not recorded)


# ----------------------------------------------------------------------------- encoding
class _Encoder:
  """Turns a value into JSON-able data plus named arrays (see `encode`)."""

  def __init__(self):
    self.arrays: dict[str, np.ndarray] = {}
    self.paths: dict[str, str] = {}

  def _array(self, a: np.ndarray, path: str) -> str:
    if a.dtype.hasobject:
      raise TypeError(f"{path}: arrays of dtype {a.dtype} cannot be stored safely")
    name = f"a{len(self.arrays)}"
    self.arrays[name] = a if a.flags.c_contiguous else a.copy(order="C")
    self.paths[name] = path
    return name

  def __call__(self, x: Any, path: str) -> Any:
    if x is None or isinstance(x, bool) or type(x) in (int, str):
      return x
    if isinstance(x, np.generic):  # numpy scalars (np.float64 is a float subclass: test first)
      return {_TAG: "scalar", "k": self._array(np.asarray(x), path)}
    if type(x) is float:
      return x if np.isfinite(x) else {_TAG: "float", "v": repr(x)}
    if type(x) is bytes:
      return {_TAG: "bytes", "k": self._array(np.frombuffer(x, np.uint8), path)}
    if type(x) is np.ndarray:
      return {_TAG: "array", "k": self._array(x, path)}
    if type(x) is list:
      return [self(v, f"{path}[{i}]") for i, v in enumerate(x)]
    if type(x) is tuple:
      return {_TAG: "tuple", "v": [self(v, f"{path}[{i}]") for i, v in enumerate(x)]}
    if type(x) is dict:
      if all(type(k) is str for k in x) and _TAG not in x:
        return {k: self(v, f"{path}.{k}") for k, v in x.items()}
      return {
          _TAG: "dict",
          "v": [[self(k, f"{path}.<key>"), self(v, f"{path}[{k!r}]")] for k, v in x.items()],
      }
    raise TypeError(
        f"{path}: cannot store a {type(x).__module__}.{type(x).__qualname__} "
        "(arrays, bytes, numbers, bool, None, str, lists, tuples and dicts only)"
    )


def encode(value: Any, root: str = "content") -> tuple[Any, dict[str, np.ndarray], dict[str, str]]:
  """Splits `value` into JSON-able data and arrays, so that `decode` rebuilds it exactly.

  Plain JSON values stay as they are (non-finite floats excepted); arrays, numpy scalars, bytes,
  tuples, non-finite floats and dicts whose keys are not all strings become `{"$t": tag, ...}`
  objects, arrays and bytes referring to an entry of the returned array dict by name.

  Returns:
    (JSON-able data, {name: C-contiguous array}, {name: where the array sits in `value`}).
  Raises:
    TypeError (naming where) for any other type: object arrays, class instances, jax arrays.
  """
  enc = _Encoder()
  data = enc(value, root)
  return data, enc.arrays, enc.paths


def decode(data: Any, arrays: dict[str, np.ndarray]) -> Any:
  """Inverse of `encode`: rebuilds the value from its JSON data and its arrays."""
  if data is None or isinstance(data, (bool, int, float, str)):
    return data
  if isinstance(data, list):
    return [decode(v, arrays) for v in data]
  if not isinstance(data, dict):
    raise ValueError(f"unexpected JSON value {data!r}")
  if _TAG not in data:
    return {k: decode(v, arrays) for k, v in data.items()}
  tag = data[_TAG]
  if tag == "tuple":
    return tuple(decode(v, arrays) for v in data["v"])
  if tag == "dict":
    return {decode(k, arrays): decode(v, arrays) for k, v in data["v"]}
  if tag == "float":
    return float(data["v"])
  if tag in ("array", "scalar", "bytes"):
    a = arrays[data["k"]]
    if tag == "array":
      return a
    if tag == "scalar":
      if a.ndim:
        raise ValueError(f"array {data['k']} holds a scalar but has shape {a.shape}")
      return a[()]
    if a.dtype != np.uint8 or a.ndim != 1:
      raise ValueError(f"array {data['k']} holds bytes but is {a.dtype}{list(a.shape)}")
    return a.tobytes()
  raise ValueError(f"unknown tag {tag!r}")


def _sha256(a: np.ndarray) -> str:
  return hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()


# ----------------------------------------------------------------------------- files
def pickle_allowed(allow_pickle: bool | None = None) -> bool:
  """The opt-in for legacy pickle files: the argument, else SPR_ALLOW_PICKLE=1."""
  if allow_pickle is not None:
    return bool(allow_pickle)
  return os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def _refuse_pickle(path: Path) -> UnsafeFileError:
  return UnsafeFileError(
      f"{path} is a pickle file from an older version of this code; it is not loaded because "
      f"unpickling a file runs any code it holds. If you trust it (you wrote it), rerun with "
      f"{ALLOW_PICKLE_ENV}=1 in the environment; the run then continues in the safe "
      f"{SUFFIX} format."
  )


def _fsync_dir(path: Path) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # not supported by every file system: the rename is still atomic
  finally:
    os.close(fd)


def write_file(
    path: str | os.PathLike, content: Any, kind: str, config: dict | None = None
) -> Path:
  """Writes `content` (see `encode`) and `config` (JSON) to the `.npz` file `path` atomically:
  a temporary file in the same folder, fsync, rename. Nothing is left behind on failure."""
  path = Path(path)
  data, arrays, paths = encode(content)
  meta = dict(
      format=FORMAT,
      kind=kind,
      version=FORMAT_VERSION,
      config=None if config is None else json.loads(json.dumps(config)),
      arrays={
          n: dict(path=paths[n], dtype=a.dtype.str, shape=list(a.shape), sha256=_sha256(a))
          for n, a in arrays.items()
      },
      content=data,
  )
  blob = json.dumps(meta).encode("utf-8")
  tmp = path.with_name("." + path.name + ".tmp")
  try:
    with open(tmp, "wb") as f:
      np.savez(f, allow_pickle=False, **arrays, **{_META: np.frombuffer(blob, np.uint8)})
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  _fsync_dir(path.parent)
  return path


def _read_meta(z, path: Path) -> dict:
  if _META not in z.files:
    raise DamagedFileError(f"{path}: no {_META} record (not a file of this code, or damaged)")
  try:
    meta = json.loads(z[_META].tobytes().decode("utf-8"))
  except (ValueError, RecursionError, zipfile.BadZipFile, OSError, EOFError) as e:
    raise DamagedFileError(
        f"{path}: its {_META} record is damaged ({type(e).__name__}: {e})"
    ) from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise DamagedFileError(f"{path}: its {_META} record is not an {FORMAT} record")
  if not isinstance(meta.get("version"), int) or meta["version"] > FORMAT_VERSION:
    raise CheckpointError(
        f"{path} was written in format version {meta.get('version')!r} by a "
        f"newer version of this code; this one reads up to {FORMAT_VERSION}"
    )
  return meta


def _open_npz(path: Path):
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != _ZIP_MAGIC:
    if magic[:1] == b"\x80":  # the PROTO opcode that starts every pickle since protocol 2
      raise UnsafeFileError(
          f"{path} is a pickle, not an {SUFFIX} file: refused (loading a "
          "pickle runs any code it holds)"
      )
    raise DamagedFileError(
        f"{path}: not an {SUFFIX} file (it starts with {magic!r}: damaged "
        "or another kind of file)"
    )
  try:
    return np.load(path, allow_pickle=False)
  except (ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
    raise DamagedFileError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def read_meta(path: str | os.PathLike) -> dict:
  """The JSON record of an `.npz` file (kind, version, config, array checksums) without reading
  its arrays. Raises DamagedFileError / UnsafeFileError / CheckpointError."""
  path = Path(path)
  with _open_npz(path) as z:
    return _read_meta(z, path)


def _read_npz(path: Path, kind: str | None) -> tuple[dict, Any]:
  """(meta, decoded content) of a verified `.npz` file of `kind`."""
  with _open_npz(path) as z:
    meta = _read_meta(z, path)
    if kind is not None and meta.get("kind") != kind:
      raise CheckpointError(f"{path} holds a {meta.get('kind')!r} file, not a {kind!r} file")
    table = meta.get("arrays")
    if (
        not isinstance(table, dict)
        or set(z.files) != set(table) | {_META}
        or not all(isinstance(info, dict) for info in table.values())
    ):
      raise DamagedFileError(f"{path}: its arrays do not match its {_META} record")
    arrays = {}
    for name, info in table.items():
      where = f"array {name} ({info.get('path')})"
      try:
        a = z[name]
      except (ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise DamagedFileError(f"{path}: {where} is damaged ({type(e).__name__}: {e})") from None
      if a.dtype.str != info.get("dtype") or list(a.shape) != info.get("shape"):
        raise DamagedFileError(
            f"{path}: {where} is {a.dtype.str}{list(a.shape)}, its record "
            f"says {info.get('dtype')}{info.get('shape')}"
        )
      if _sha256(a) != info.get("sha256"):
        raise DamagedFileError(
            f"{path}: {where} fails its sha256 checksum (the file was "
            "changed or damaged after it was written)"
        )
      arrays[name] = a
  try:
    content = decode(meta.get("content"), arrays)
  except (ValueError, KeyError, TypeError, RecursionError) as e:
    raise DamagedFileError(f"{path}: its {_META} record is inconsistent ({e!r})") from None
  return meta, content


def read_file(
    path: str | os.PathLike, kind: str | None = None, allow_pickle: bool | None = None
) -> dict:
  """Reads and verifies a file written by `write_file` (or `save`), returning
  `{"kind", "version", "config", "content"}`. A `.pkl` file is read as a legacy pickle (content:
  the unpickled object) only with the opt-in (`pickle_allowed`).

  Raises:
    FileNotFoundError; UnsafeFileError (a pickle without the opt-in, or where an `.npz` is
    expected); DamagedFileError (naming the file and what failed); CheckpointError (a file of
    another kind or of a newer format).
  """
  path = Path(path)
  if path.suffix == LEGACY_SUFFIX:
    if not path.exists():
      raise FileNotFoundError(path)
    if not pickle_allowed(allow_pickle):
      raise _refuse_pickle(path)
    try:
      with open(path, "rb") as f:
        content = pickle.load(f)  # the caller opted in: a file it trusts
    except Exception as e:  # noqa: BLE001 - truncated or corrupt
      raise DamagedFileError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    return dict(kind=kind, version=1, config=None, content=content)
  meta, content = _read_npz(path, kind)
  return dict(
      kind=meta["kind"], version=meta["version"], config=meta.get("config"), content=content
  )


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
  """Steps of the checkpoints in `directory` (`ckpt_<step>.npz`, and legacy `.pkl`), ascending."""
  path = Path(directory)
  if not path.is_dir():
    return []
  return sorted({int(m.group(1)) for m in map(_NAME.match, os.listdir(path)) if m})


def prune(directory: str | os.PathLike, keep: int) -> None:
  """Deletes all but the newest `keep` checkpoints of `directory` (`keep=0`: all of them and the
  folder, when it holds nothing else)."""
  path = Path(directory)
  steps = checkpoint_steps(path)
  for step in steps[: len(steps) - keep] if keep > 0 else steps:
    for suffix in (SUFFIX, LEGACY_SUFFIX):
      (path / f"ckpt_{step}{suffix}").unlink(missing_ok=True)
  if keep == 0 and path.is_dir() and not any(path.iterdir()):
    path.rmdir()


def checkpoint_file(directory: str | os.PathLike, step: int) -> Path:
  """The file of the checkpoint at `step`: `ckpt_<step>.npz`, else a legacy `.pkl` if present."""
  npz = Path(directory) / f"ckpt_{int(step)}{SUFFIX}"
  pkl = npz.with_suffix(LEGACY_SUFFIX)
  return pkl if not npz.exists() and pkl.exists() else npz


def save(
    directory: str | os.PathLike,
    step: int,
    tree: Any,
    host_state: dict,
    keep: int = 2,
    config: dict | None = None,
) -> Path:
  """Writes `ckpt_<step>.npz` atomically, then prunes the folder.

  Args:
    directory: the checkpoint folder (created if missing).
    step: the step the state is at (the file's name).
    tree: a pytree of arrays (device arrays are fetched).
    host_state: the host-side state (see `encode` for what it may hold).
    keep: how many checkpoints to keep: the newest `keep` at or before `step`. Checkpoints after
      `step` are deleted too: a run writes an older step only after resuming past them (they
      were damaged), so they belong to a history the run abandoned.
    config: the run's resolved settings (JSON-able), recorded for `restore(expect_config=)` and
      `restore_missing_config`.
  Returns:
    The file written.
  """
  path = Path(directory)
  path.mkdir(parents=True, exist_ok=True)
  leaves = [np.asarray(x) for x in jax.device_get(jax.tree.leaves(tree))]
  final = write_file(
      path / f"ckpt_{int(step)}{SUFFIX}",
      dict(step=int(step), leaves=leaves, host=host_state),
      "checkpoint",
      config,
  )
  steps = checkpoint_steps(path)
  kept = [s for s in steps if s <= int(step)][-keep:] if keep > 0 else [int(step)]
  for old in steps:
    if old not in kept:
      for suffix in (SUFFIX, LEGACY_SUFFIX):
        (path / f"ckpt_{old}{suffix}").unlink(missing_ok=True)
  return final


def _read_checkpoint(file: Path, allow_pickle: bool | None) -> tuple[int, list, dict, dict | None]:
  record = read_file(file, "checkpoint", allow_pickle)
  content = record["content"]
  try:
    step, leaves, host = content["step"], content["leaves"], content["host"]
  except (TypeError, KeyError) as e:
    raise DamagedFileError(f"{file}: not a checkpoint ({type(e).__name__}: {e})") from None
  m = _NAME.match(file.name)
  if m and int(m.group(1)) != step:
    raise DamagedFileError(f"{file}: holds step {step}, not the step of its name")
  return step, list(leaves), host, record["config"]


def restore(
    directory: str | os.PathLike,
    template: Any,
    step: int | None = None,
    *,
    expect_config: dict | None = None,
    legacy: dict | None = None,
    allow_pickle: bool | None = None,
) -> Restored:
  """Loads the checkpoint at `step` (default: the newest usable one), verified.

  Args:
    directory: the checkpoint folder.
    template: a pytree whose leaves have `.shape` and `.dtype` (arrays or
      jax.ShapeDtypeStruct): the structure to restore into.
    step: a specific step, or None for the newest; a damaged newest checkpoint (truncated, or
      failing a checksum) is reported by name (logging.warning) and the previous one is tried.
    expect_config: the caller's settings: a checkpoint that recorded other settings is refused
      naming them (`check_config`, with `legacy`).
    legacy: see `check_config`.
    allow_pickle: read legacy `.pkl` checkpoints (default: the SPR_ALLOW_PICKLE opt-in).
  Returns:
    Restored(step, tree with numpy leaves, host_state dict, recorded config or None).
  Raises:
    CheckpointError when no checkpoint is usable or one does not match the template;
    UnsafeFileError for a legacy pickle without the opt-in; spr.workdir.WorkdirError when the
    checkpoint was written with other settings than `expect_config`.
  """
  steps = checkpoint_steps(directory) if step is None else [step]
  if not steps:
    raise CheckpointError(f"no checkpoint in {directory}")
  damaged = []
  for s in reversed(steps):
    file = checkpoint_file(directory, s)
    try:
      found, leaves, host, config = _read_checkpoint(file, allow_pickle)
    except (DamagedFileError, FileNotFoundError) as e:
      damaged.append(str(e) if isinstance(e, DamagedFileError) else f"{file}: missing")
      logging.warning(
          "unusable checkpoint: %s; %s",
          damaged[-1],
          "trying the previous one" if s != steps[0] else "no older checkpoint",
      )
      continue
    if expect_config is not None and config is not None:
      check_config(config, expect_config, legacy, where=str(file))
    leaves_t, treedef = jax.tree.flatten(template)
    if len(leaves) != len(leaves_t):
      raise CheckpointError(
          f"{file}: holds {len(leaves)} arrays, this configuration needs "
          f"{len(leaves_t)}: it was written by another configuration"
      )
    for i, (a, t) in enumerate(zip(leaves, leaves_t)):
      a = np.asarray(a)
      if a.shape != tuple(t.shape) or a.dtype != t.dtype:
        raise CheckpointError(
            f"{file}: array {i} is {a.dtype}{list(a.shape)}, this configuration needs "
            f"{t.dtype}{list(t.shape)}: it was written by another configuration"
        )
    if damaged:
      logging.warning(
          "resuming from %s (step %d), the newest usable checkpoint: %d newer "
          "one(s) were damaged",
          file,
          found,
          len(damaged),
      )
    return Restored(found, jax.tree.unflatten(treedef, leaves), host, config)
  raise CheckpointError(f"no usable checkpoint in {directory}: " + "; ".join(damaged))


def check_config(
    recorded: dict, current: dict, legacy: dict | None = None, where: str = "the checkpoint"
) -> None:
  """Raises spr.workdir.WorkdirError naming each setting where `recorded` (what a checkpoint
  was written with) differs from `current`. As in `spr.workdir.prepare`, a key of `current`
  missing from `recorded` reads as its `legacy` value (or `legacy[key](recorded)`)."""
  from spr.workdir import WorkdirError, settings_diff

  diffs = settings_diff(recorded, current, legacy)
  if diffs:
    raise WorkdirError(
        f"{where} was written by a run with a different config ({diffs}); "
        "resume with its settings or use another --workdir"
    )


def read_settings(config_file: str | os.PathLike) -> dict | None:
  """A run's config.json as a dict, to record with a checkpoint; None when it is missing or
  unreadable (removed under a running job: the checkpoint is still written, without a record)."""
  try:
    settings = json.loads(Path(config_file).read_text())
  except (OSError, ValueError) as e:
    logging.warning("%s is unreadable (%s): this checkpoint records no settings", config_file, e)
    return None
  return settings if isinstance(settings, dict) else None


def recorded_config(directory: str | os.PathLike) -> tuple[Path, dict] | None:
  """(file, settings) recorded by the newest checkpoint in `directory` whose record is readable;
  None if none records them (no checkpoint, or legacy pickles)."""
  for s in reversed(checkpoint_steps(directory)):
    file = checkpoint_file(directory, s)
    if file.suffix != SUFFIX:
      continue
    try:
      meta = read_meta(file)
    except (CheckpointError, OSError) as e:
      logging.warning("checkpoint %s: its settings are unreadable (%s)", file, e)
      continue
    if meta.get("kind") == "checkpoint" and isinstance(meta.get("config"), dict):
      return file, meta["config"]
  return None


def restore_missing_config(
    config_file: str | os.PathLike, directory: str | os.PathLike
) -> Path | None:
  """If `config_file` (a run's config.json) is missing while `directory` holds checkpoints that
  recorded the run's settings, writes them back (atomically) and returns the checkpoint read;
  else None. Run before `spr.workdir.prepare`, so that a resume with other settings is refused
  naming them instead of claiming the new settings for the whole run."""
  from spr.workdir import write_json_atomic

  config_file = Path(config_file)
  if config_file.exists():
    return None
  found = recorded_config(directory)
  if found is None:
    return None
  file, config = found
  config_file.parent.mkdir(parents=True, exist_ok=True)
  write_json_atomic(config_file, config)
  logging.warning("%s was missing: restored the run's settings recorded in %s", config_file, file)
  return file
