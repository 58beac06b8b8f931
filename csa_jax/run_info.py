"""Provenance of a run: what every JSON file a ``csa-jax`` command writes records under "run".

``run_info`` says which code ran where and how: csa_jax and library versions (read from the
installed packages' metadata, so asking for torch's version never imports torch), the JAX
backend and its devices, the process count, the UTC time, the command line, the seed and the
config as plain JSON. It records no hostname, user name or path outside the command line.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import math
import os
import platform
import shlex
from typing import Any

import jax
import numpy as np

# Distribution names (as pip knows them) -> the key they are recorded under.
LIBRARIES = {"jax": "jax", "jaxlib": "jaxlib", "flax": "flax", "optax": "optax",
             "orbax": "orbax-checkpoint", "numpy": "numpy", "torch": "torch"}
# Environment variables that change what JAX runs on (never anything else is recorded).
_ENV = ("XLA_FLAGS", "JAX_PLATFORMS")


def package_version(dist: str) -> str | None:
  """The installed version of distribution ``dist`` ("orbax-checkpoint"), None when absent."""
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def versions() -> dict:
  """{'csa_jax', 'python', 'jax', 'jaxlib', 'flax', 'optax', 'orbax', 'numpy', 'torch'}: versions.

  A library that is not installed is None. Nothing is imported to find a version.
  """
  from csa_jax import __version__  # noqa: PLC0415  (the package imports this module's users)
  out = {"csa_jax": __version__, "python": platform.python_version()}
  out.update({k: package_version(d) for k, d in LIBRARIES.items()})
  return out


def devices() -> dict:
  """The default backend and its devices: {'backend', 'device_kinds', 'device_count',
  'local_device_count', 'process_count'} (initialises the backend if nothing has yet)."""
  devs = jax.devices()
  return {"backend": jax.default_backend(),
          "device_kinds": sorted({d.device_kind for d in devs}),
          "device_count": len(devs), "local_device_count": jax.local_device_count(),
          "process_count": jax.process_count()}


def plain(obj: Any) -> Any:
  """``obj`` as plain JSON values: dicts (string keys), lists, str, int, float, bool, None.

  ConfigDicts (anything with ``to_dict``) and dataclasses become dicts, tuples and arrays lists,
  numpy scalars Python ones, paths strings; a non-finite float becomes None (strict JSON has no
  NaN); anything else its ``str``.
  """
  if obj is None or isinstance(obj, (bool, int, str)):
    return obj
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, np.generic):
    return plain(obj.item())
  if isinstance(obj, np.ndarray):
    return plain(obj.tolist())
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return plain(dataclasses.asdict(obj))
  if hasattr(obj, "to_dict") and callable(obj.to_dict) and not isinstance(obj, type):
    return plain(obj.to_dict())
  if isinstance(obj, dict):
    return {str(k): plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple, set, frozenset)):
    items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
    return [plain(v) for v in items]
  return str(obj)


def run_info(command_argv=None, config=None, seed: int | None = None) -> dict:
  """What a results file records about the run that wrote it.

  Args:
    command_argv: the command line as a list of words (e.g. ``["csa-jax", "eval", ...]``);
      recorded shell-quoted, so it can be pasted back. None records None.
    config: the run's settings (a dict, ConfigDict or dataclass); stored through ``plain``.
    seed: the run's random seed, when it has one.

  Returns:
    A JSON-ready dict: {'versions': ``versions()``, 'devices': ``devices()``, 'time_utc' (ISO
    8601, seconds), 'command', 'seed', 'config', 'env' (XLA_FLAGS, JAX_PLATFORMS when set)}.
    No hostname.
  """
  now = datetime.datetime.now(datetime.timezone.utc)
  return {
      "versions": versions(),
      "devices": devices(),
      "time_utc": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
      "command": None if command_argv is None else shlex.join(map(str, command_argv)),
      "seed": None if seed is None else int(seed),
      "config": plain(config),
      "env": {k: os.environ[k] for k in _ENV if k in os.environ},
  }


def version_lines() -> str:
  """What ``csa-jax --version`` prints: versions on one line, the backend's devices on another."""
  v = versions()
  libs = ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", "flax", "optax", "numpy")
                   if v[k] is not None)
  d = devices()
  procs = f", {d['process_count']} processes" if d["process_count"] > 1 else ""
  return (f"csa-jax {v['csa_jax']} (python {v['python']}; {libs})\n"
          f"backend {d['backend']}: {d['device_count']} device"
          f"{'s' * (d['device_count'] != 1)} ({', '.join(d['device_kinds'])}){procs}")
