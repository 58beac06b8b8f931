"""Atomic writes: a crashed or failed command never leaves a half-written output behind.

Outputs are written to ``.<name>.<random>.tmp`` beside the target and renamed onto it only when
complete. A process killed between the two leaves the temporary file; ``remove_stale_temps``
deletes such leftovers on the next run. Written files get the permissions the umask gives any
new file (``mkstemp`` alone would make them private, 0600).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from typing import Any, Iterator

import numpy as np

from csa_jax.errors import fail

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside ``path``; renames it onto ``path`` only if the body succeeds."""
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".",
                             suffix=TEMP_SUFFIX)
  os.close(fd)
  try:
    yield tmp
    if os.path.isfile(tmp):
      os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def atomic_paths(paths) -> Iterator[list[str]]:
  """``atomic_path`` for several files that belong together: all of them or none.

  Yields one temporary path per target; only when the body has written them all are they renamed
  onto their targets. If the body fails, no target is touched; if a rename fails, the targets
  already renamed are removed again (they are new results of this call).
  """
  paths = [os.fspath(p) for p in paths]
  with contextlib.ExitStack() as stack:
    tmps = []
    for p in paths:
      d = os.path.dirname(os.path.abspath(p))
      os.makedirs(d, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(p) + ".",
                                 suffix=TEMP_SUFFIX)
      os.close(fd)
      stack.callback(_remove_if_exists, tmp)
      tmps.append(tmp)
    yield tmps
    done = []
    try:
      for tmp, p in zip(tmps, paths):
        if os.path.isfile(tmp):
          os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
        done.append(p)
    except BaseException:
      for p in done:
        _remove_if_exists(p)
      raise


def _remove_if_exists(path: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(path)


def remove_stale_temps(directory: str | os.PathLike) -> list[str]:
  """Deletes the temporary files that killed atomic writes left in ``directory``.

  Only call it on a directory this process owns (a workdir under its lock): a concurrent
  writer's temporary file looks the same.

  Returns:
    The paths removed.
  """
  removed = []
  for p in glob.glob(os.path.join(glob.escape(os.fspath(directory)), ".*" + TEMP_SUFFIX)):
    with contextlib.suppress(OSError):
      os.remove(p)
      removed.append(p)
  return removed


def check_output_path(path: str | os.PathLike, field: str = "--out") -> str:
  """Fails now, before any compute, if ``path`` could not be written later.

  Args:
    path: the output file a command will write at its end.
    field: the flag or config key that named it (for the error line).

  Returns:
    The path, absolute.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.isdir(path):
    raise fail(path, field, "a file path", "a directory")
  d = os.path.dirname(path)
  probe = d
  while not os.path.exists(probe):  # the first existing ancestor decides
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise fail(path, field, "a path whose parent is a directory", f"{probe} is a file")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise fail(path, field, "a writable directory", f"{probe} is not writable")
  return path


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
