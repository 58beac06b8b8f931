"""Restricted unpickling: user pickles are data, never code, and never bigger than their file.

The entry points are ``load_data`` / ``loads_data`` (numpy arrays, dtypes and builtin containers)
and ``unpickle`` (the same with another table of globals, as ``interop.pth`` uses for torch
checkpoints). The work is split by concern:

- ``restricted_unpickler``: the opcode-level unpickler (what a stream may call, build or mutate);
- ``pickle_globals``: the validating stand-ins for the numpy and builtin globals it may name;
- ``pickle_limits``: the caps (work and expanded size per byte of input, depth, no cycles);
- ``pickle_markers``: the immutable markers a stream gets instead of real functions.

Any failure (truncation, numpy's own checks, ``MemoryError``, ``RecursionError``) is one
``InputError`` line naming the file.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Mapping

from csa_jax.errors import InputError, fail, short_reason
from csa_jax.formats.pickle_globals import NUMPY_GLOBALS
from csa_jax.formats.pickle_limits import (BUDGET_BASE, BUDGET_PER_BYTE, MAX_DEPTH, MAX_NDIM,
                                           Budget, check_graph)
from csa_jax.formats.pickle_markers import Global, Marker, brief
from csa_jax.formats.regular_file import open_regular
from csa_jax.formats.restricted_unpickler import RestrictedUnpickler

__all__ = [
    "BUDGET_BASE", "BUDGET_PER_BYTE", "MAX_DEPTH", "MAX_NDIM", "NUMPY_GLOBALS", "Budget",
    "Global", "Marker", "RestrictedUnpickler", "brief", "check_graph", "load_data", "loads_data",
    "unpickle",
]


def unpickle(file, size: int, source: str, *, table: Mapping[tuple[str, str], Any] | None = None,
             persistent: Callable[[Any], Any] | None = None, budget: Budget | None = None) -> Any:
  """Unpickles and checks one pickle; every failure is an ``InputError`` naming ``source``.

  Args:
    file: binary file positioned at the pickle.
    size: bytes the pickle may occupy (the file's or zip member's size).
    source: names the file in messages.
    table: (module, name) -> ``Global`` or inert value; ``NUMPY_GLOBALS`` by default.
    persistent: handles persistent ids (a checkpoint's storages); refused when None.
    budget: the file's ``Budget``; one for ``size`` bytes by default.

  Returns:
    The object tree: builtin containers, numbers, strings, numpy arrays / dtypes / scalars.
  """
  try:
    up = RestrictedUnpickler(file, size, source, table=NUMPY_GLOBALS if table is None else table,
                             persistent=persistent, budget=budget)
    obj = up.load()
    check_graph(obj, up.budget)
    return obj
  except InputError:
    raise
  except MemoryError:
    raise fail(source, "pickle", "data that fits in memory", "a MemoryError while unpickling") \
        from None
  except RecursionError:
    raise fail(source, "pickle", "data of bounded depth", "a RecursionError while unpickling") \
        from None
  except Exception as e:  # truncated or corrupt stream, numpy's own checks
    raise fail(source, "pickle", "a complete pickle of arrays and containers",
               f"an unreadable stream ({short_reason(e)})") from None


def loads_data(data: bytes, source: str = "<bytes>") -> Any:
  """Unpickles numpy arrays, dtypes and builtin containers; refuses everything else.

  Args:
    data: the whole pickle.
    source: names the data in messages.

  Returns:
    The object tree, as ``unpickle``.
  """
  return unpickle(io.BytesIO(data), len(data), source)


def load_data(path) -> Any:
  """``loads_data`` for a file path, streamed (a multi-GB pickle is not held twice).

  Args:
    path: the pickle file.

  Returns:
    The object tree, as ``unpickle``.
  """
  f, size = open_regular(path, "a readable pickle")
  with f:
    return unpickle(f, size, str(path))
