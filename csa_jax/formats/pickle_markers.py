"""What a restricted pickle may name, and how untrusted values are described in messages.

A pickle never gets a real function or class: it gets an immutable ``Global`` marker whose
validating ``call`` the unpickler runs (see ``safe_pickle``). ``brief`` describes any value taken
from a file in one short line without recursing into it, for error messages.
"""

from __future__ import annotations

import collections
from typing import Callable

import numpy as np

NONE_TYPE = type(None)
DICT_TYPES = (dict, collections.OrderedDict)
# numpy scalar types a pickle may name as plain values (dtype arguments): never called or changed.
NUMPY_TYPES = tuple(getattr(np, t) for t in (
    "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
    "uint32", "uint64", "bool_"))


class Marker:
  """Base of what a pickle can name but never change: no attribute can be set or deleted, and
  ``__setstate__`` refuses (BUILD never reaches it anyway). Subclasses define ``__repr__``."""

  __slots__ = ()

  def __setattr__(self, key, value):
    raise AttributeError(f"{self!r} is immutable")

  def __delattr__(self, key):
    raise AttributeError(f"{self!r} is immutable")

  def __setstate__(self, state):
    raise AttributeError(f"{self!r} is immutable")


class Global(Marker):
  """A global a pickle may name, callable only through ``RestrictedUnpickler``, never the real
  function or class.

  ``call(unpickler, *args)`` validates its arguments before building anything; ``None`` marks a
  name that is only an argument (``numpy.ndarray`` for ``_reconstruct``).

  Args:
    module: the module the pickle names.
    name: the global's name in it.
    call: the validating stand-in, or None for a name that is never called.
  """

  __slots__ = ("module", "name", "call")

  def __init__(self, module: str, name: str, call: Callable | None = None):
    object.__setattr__(self, "module", module)
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "call", call)

  def __repr__(self) -> str:
    return f"{self.module}.{self.name}"


def brief(x, depth: int = 1) -> str:
  """A short, one-line description of untrusted ``x`` that never recurses deeply.

  Args:
    x: any value a pickle produced.
    depth: how many levels of small tuples to spell out.

  Returns:
    The description, e.g. ``'an array of shape (3, 4) (float32)'`` or ``"'abc'"``.
  """
  t = type(x)
  if isinstance(x, Marker):
    return repr(x)
  if t is int:
    return repr(x) if x.bit_length() < 64 else f"an int of {x.bit_length()} bits"
  if t in (float, bool, NONE_TYPE):
    return repr(x)
  if t is str:
    return repr(x[:40]) + ("..." if len(x) > 40 else "")
  if t in (bytes, bytearray):
    return f"{t.__name__} of {len(x)} bytes"
  if t is tuple and depth > 0 and len(x) <= 8:
    return "(" + ", ".join(brief(i, depth - 1) for i in x) + ("," if len(x) == 1 else "") + ")"
  if t in (tuple, list, set, frozenset) or t in DICT_TYPES:
    return f"a {t.__name__} of {len(x)} items"
  if t is np.ndarray:
    return f"an array of shape {x.shape} ({x.dtype})"
  if isinstance(x, np.dtype):
    return f"dtype {x.str}"
  if t is type:
    return f"the type {x.__module__}.{x.__name__}"
  return f"a {t.__name__}"


def same(a, b) -> bool:
  """Exact equality of ``a`` (untrusted) with ``b`` (a small trusted constant), types included.

  Args:
    a: a value from the file.
    b: the constant; tuples are compared item by item.

  Returns:
    Whether ``a`` has ``b``'s type and value (an ``a`` with a custom ``__eq__`` never matches).
  """
  if type(a) is not type(b):
    return False
  if type(b) is tuple:
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
  return a == b
