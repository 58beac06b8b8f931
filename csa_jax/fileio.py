"""Atomic writes: a crashed or failed command never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside ``path``; renames it onto ``path`` only if the body succeeds."""
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path, obj: Any) -> None:
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
    f.write("\n")


def save_npy(path, arr: np.ndarray) -> None:
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.save(f, arr)


def save_npz(path, **arrays: np.ndarray) -> None:
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.savez(f, **arrays)


def _json_default(o):
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, np.generic):
    return o.item()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")
