"""Restricted unpickling: user pickles are data, never code.

``pickle.load`` resolves every global the stream names and calls what it is told to, so a crafted
file can run ``os.system``. Here ``find_class`` admits only an explicit allowlist of
constructors that build data (numpy arrays and dtypes, OrderedDict, torch tensor rebuilding);
anything else raises ``InputError`` before it is called.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any, Callable, Mapping

import numpy as np

from csa_jax.errors import InputError


def _numpy_globals() -> dict[tuple[str, str], Any]:
  from numpy.lib import format as _  # noqa: F401  (makes sure numpy is fully imported)
  try:
    from numpy._core import multiarray as ma
  except ImportError:  # numpy < 2
    from numpy.core import multiarray as ma  # type: ignore
  g = {}
  # Pickles written by numpy 1.x name numpy.core, by 2.x numpy._core: accept both.
  for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    g[(mod, "_reconstruct")] = ma._reconstruct
    g[(mod, "scalar")] = ma.scalar
  g[("numpy", "ndarray")] = np.ndarray
  g[("numpy", "dtype")] = np.dtype
  for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
            "uint16", "uint32", "uint64", "bool_"):
    g[("numpy", t)] = getattr(np, t)
  g[("collections", "OrderedDict")] = collections.OrderedDict
  return g


class RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler whose globals come only from ``allowed``; persistent ids only via ``persistent``."""

  def __init__(self, file, allowed: Mapping[tuple[str, str], Any], source: str,
               persistent: Callable[[Any], Any] | None = None):
    super().__init__(file)
    self._allowed = allowed
    self._source = source
    self._persistent = persistent

  def find_class(self, module: str, name: str):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise InputError(
          f"{self._source}: pickle: expected only data (arrays, lists, dicts), found a reference "
          f"to {module}.{name}; refused without running it") from None

  def persistent_load(self, pid):
    if self._persistent is None:
      raise InputError(f"{self._source}: pickle: expected no persistent references, found {pid!r}")
    return self._persistent(pid)


def loads_data(data: bytes, source: str = "<bytes>") -> Any:
  """Unpickles numpy arrays, dtypes and builtin containers; refuses everything else."""
  try:
    return RestrictedUnpickler(io.BytesIO(data), _numpy_globals(), source).load()
  except InputError:
    raise
  except Exception as e:  # truncated or corrupt stream
    raise InputError(f"{source}: pickle: expected a complete pickle of arrays and containers, "
                     f"found an unreadable stream ({type(e).__name__}: {e})") from None


def load_data(path) -> Any:
  """``loads_data`` for a file path."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise InputError(f"{path}: file: expected a readable pickle, found {e.strerror}") from None
  return loads_data(data, source=str(path))
