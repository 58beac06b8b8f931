"""Validating stand-ins for the globals numpy and the standard library pickle with.

``NUMPY_GLOBALS`` maps each (module, name) a data pickle may name to a ``Global`` marker whose
``call`` checks its arguments before building anything, or to an inert value (numpy scalar
types). What they admit:

- numpy ``_reconstruct`` / ``scalar`` / ``dtype`` / ``_frombuffer``, ``_codecs.encode(text,
  'latin1')``, ``set`` / ``frozenset`` / ``bytes`` / ``bytearray``, ``OrderedDict()``;
- BUILD once, on an array, dtype or OrderedDict a stand-in has just made (``up.fresh``): array
  state is checked against its shape and dtype, dtype state must be numpy's own for that type
  (structured and subarray dtypes are refused), OrderedDict state (torch's ``_metadata``) is
  dropped.

Every stand-in takes the running ``RestrictedUnpickler`` first: its ``source`` names the file in
messages and its ``budget`` is charged for every byte converted or copied.
"""

from __future__ import annotations

import collections
import math
import pickle
import types
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from csa_jax.errors import fail
from csa_jax.formats.pickle_limits import MAX_NDIM
from csa_jax.formats.pickle_markers import NUMPY_TYPES, Global, brief, same

try:
  from numpy._core import multiarray as _ma
except ImportError:  # numpy < 2
  from numpy.core import multiarray as _ma  # type: ignore

if TYPE_CHECKING:
  from csa_jax.formats.restricted_unpickler import RestrictedUnpickler


def _shape(up: RestrictedUnpickler, shape) -> tuple[int, ...]:
  if (type(shape) is not tuple or len(shape) > MAX_NDIM
      or not all(type(s) is int and 0 <= s < 2**62 for s in shape)):
    raise fail(up.source, "pickle", f"an array shape: a tuple of at most {MAX_NDIM} non-negative "
               "ints", brief(shape))
  return shape


def _codecs_encode(up: RestrictedUnpickler, text, encoding):
  # Protocols 0-2 store bytes (numpy's raw data too) as latin1 text; nothing else is data.
  if type(text) is not str or type(encoding) is not str or encoding not in ("latin1", "latin-1"):
    raise fail(up.source, "pickle", "_codecs.encode(text, 'latin1') (how protocols 0-2 store "
               "bytes)", f"_codecs.encode({brief(text)}, {brief(encoding)})")
  up.budget.charge(len(text), "decoding bytes")
  return text.encode("latin1")


def _bytes(up: RestrictedUnpickler, *args):
  if args:  # protocols 0-2 write b'' as bytes(); anything else goes through _codecs.encode
    raise fail(up.source, "pickle", "bytes() without arguments", f"bytes{brief(args)}")
  return b""


def _bytearray(up: RestrictedUnpickler, *args):
  # Protocols < 5 write bytearray(bytes) or bytearray(latin1 text, 'latin-1').
  if not args:
    return bytearray()
  if len(args) == 1 and type(args[0]) is bytes:
    up.budget.charge(len(args[0]), "copying bytes")
    return bytearray(args[0])
  if len(args) == 2 and type(args[1]) is str:
    return bytearray(_codecs_encode(up, args[0], args[1]))
  raise fail(up.source, "pickle", "bytearray(bytes) or bytearray(text, 'latin-1')",
             f"bytearray{brief(args)}")


def _items(up: RestrictedUnpickler, args: tuple, what: str) -> list:
  if not args:
    return []
  if len(args) != 1 or type(args[0]) not in (list, tuple):
    raise fail(up.source, "pickle", f"{what}(list)", f"{what}{brief(args)}")
  for item in args[0]:
    up.check_key(item)
  return list(args[0])


def _set(up: RestrictedUnpickler, *args):
  return set(_items(up, args, "set"))


def _frozenset(up: RestrictedUnpickler, *args):
  return frozenset(_items(up, args, "frozenset"))


def _ordered_dict(up: RestrictedUnpickler, *args):
  if args:  # OrderedDict pickles as OrderedDict() + SETITEMS under every protocol
    raise fail(up.source, "pickle", "OrderedDict() without arguments", f"OrderedDict{brief(args)}")
  d = collections.OrderedDict()
  up.fresh(d, _ordered_dict_state)
  return d


def _ordered_dict_state(up: RestrictedUnpickler, d, state) -> None:
  # torch's state_dict carries ``_metadata`` (module versions) as instance state: not data we
  # use, and setting attributes from a file is what BUILD must not do. Checked, then dropped.
  if type(state) is not dict or not all(type(k) is str for k in state):
    raise fail(up.source, "pickle", "OrderedDict state as a dict of attribute names",
               brief(state))


def _dtype(up: RestrictedUnpickler, obj, align=False, copy=False):
  if type(obj) is not str or len(obj) > 32 or type(align) is not bool or type(copy) is not bool:
    raise fail(up.source, "pickle", "numpy.dtype(type name, align, copy)",
               f"numpy.dtype{brief((obj, align, copy))}")
  # Always a copy: state is then set on this object only, never on numpy's shared instance.
  d = np.dtype(obj, align=align, copy=True)
  if d.fields is not None or d.subdtype is not None or d.kind not in "biufcSUVOMm":
    raise fail(up.source, "pickle", "a plain numeric, string or object dtype",
               f"dtype {obj!r} (structured and subarray dtypes are not supported)")
  up.fresh(d, _dtype_state)
  return d


def _dtype_candidates(d: np.dtype, state):
  yield d
  yield d.newbyteorder("<")
  yield d.newbyteorder(">")
  if d.kind in "mM" and type(state) is tuple and len(state) == 9:  # datetime units live in state
    meta = state[8]
    if (type(meta) is tuple and len(meta) == 2 and type(meta[1]) is tuple and len(meta[1]) == 4
        and type(meta[1][0]) is bytes and type(meta[1][1]) is int and meta[1][0].isalpha()):
      unit = np.dtype(f"{d.char}8[{meta[1][1]}{meta[1][0].decode('ascii')}]")
      yield unit
      yield unit.newbyteorder(">")


def _dtype_state(up: RestrictedUnpickler, d: np.dtype, state) -> None:
  # numpy applies dtype state unchecked (itemsize, field offsets, subarrays): only the exact
  # state numpy itself writes for this type, in either byte order, is applied.
  for cand in _dtype_candidates(d, state):
    want = cand.__reduce__()[2]
    if same(state, want):
      d.__setstate__(want)
      return
  raise fail(up.source, "pickle", f"numpy's own state for dtype {d.str}",
             f"{brief(state)} (crafted dtype state is not applied)")


def _reconstruct(up: RestrictedUnpickler, subtype, shape, code):
  if subtype is not NDARRAY or not same(shape, (0,)) or not (same(code, b"b")
                                                             or same(code, "b")):
    raise fail(up.source, "pickle", "numpy's _reconstruct(numpy.ndarray, (0,), b'b')",
               f"_reconstruct{brief((subtype, shape, code))}")
  arr = _ma._reconstruct(np.ndarray, (0,), b"b")
  up.fresh(arr, _array_state)
  return arr


def _array_state(up: RestrictedUnpickler, arr: np.ndarray, state) -> None:
  if (type(state) is not tuple or len(state) not in (4, 5)
      or (len(state) == 5 and not same(state[0], 1))):
    raise fail(up.source, "pickle", "numpy array state (1, shape, dtype, fortran, data)",
               brief(state))
  shape, dtype, fortran, data = state[-4:]
  shape = _shape(up, shape)
  dtype = up.take_dtype(dtype)
  if type(fortran) is not bool:
    raise fail(up.source, "pickle", "a bool for Fortran order", brief(fortran))
  n = math.prod(shape)
  if dtype.hasobject:
    if type(data) is not list or len(data) != n:
      raise fail(up.source, "pickle", f"a list of {n} items for a {shape} object array",
                 brief(data))
    up.budget.charge(n, "filling an object array")
  else:
    if type(data) is str:  # Python 2 pickles; numpy reads them the same way
      up.budget.charge(len(data), "decoding bytes")
      data = data.encode("latin1")
    _check_bytes(up, data, n, dtype, shape, (bytes,))
  arr.__setstate__((1, shape, dtype, fortran, data))


def _check_bytes(up: RestrictedUnpickler, data, n: int, dtype: np.dtype, shape,
                 kinds: tuple = (bytes, bytearray, pickle.PickleBuffer, memoryview)) -> None:
  if type(data) not in kinds:
    raise fail(up.source, "pickle", "the array's raw bytes", brief(data))
  with memoryview(data) as m:
    nbytes, contiguous = m.nbytes, m.c_contiguous
  need = n * dtype.itemsize
  if nbytes != need or not contiguous or (n and not dtype.itemsize):
    raise fail(up.source, "pickle", f"{need} bytes for a {shape} {dtype} array",
               f"{nbytes} bytes" if contiguous else "a non-contiguous buffer")
  up.budget.charge(need, "building an array")


def _frombuffer(up: RestrictedUnpickler, buf, dtype, shape, order):
  dtype = up.take_dtype(dtype)
  if dtype.hasobject:
    raise fail(up.source, "pickle", "a numeric dtype for raw bytes",
               "an object dtype (raw bytes would be read as pointers)")
  shape = _shape(up, shape)
  if type(order) is not str or order not in ("C", "F"):
    raise fail(up.source, "pickle", "order 'C' or 'F'", brief(order))
  n = math.prod(shape)
  _check_bytes(up, buf, n, dtype, shape)
  arr = np.frombuffer(buf, dtype=dtype) if n else np.empty((0,), dtype)
  arr = arr.reshape(shape, order=order)
  if arr.flags.writeable:  # each writable array owns its buffer; a second user gets a copy
    if id(buf) in up.owned:
      arr = arr.copy()
    up.owned[id(buf)] = buf
  return arr


def _scalar(up: RestrictedUnpickler, dtype, data):
  dtype = up.take_dtype(dtype)
  if dtype.hasobject:  # numpy pickles an object scalar as the object itself
    return data
  if type(data) is str:
    data = data.encode("latin1")
  if type(data) is not bytes or len(data) != dtype.itemsize:
    raise fail(up.source, "pickle", f"{dtype.itemsize} bytes for a {dtype} scalar", brief(data))
  return _ma.scalar(dtype, data)


NDARRAY = Global("numpy", "ndarray")  # only ever an argument of _reconstruct


def _numpy_table() -> dict[tuple[str, str], Any]:
  g: dict[tuple[str, str], Any] = {}
  # numpy 1.x writes numpy.core, 2.x numpy._core: both name the same stand-ins.
  for core in ("numpy.core", "numpy._core"):
    g[(f"{core}.multiarray", "_reconstruct")] = Global(f"{core}.multiarray", "_reconstruct",
                                                       _reconstruct)
    g[(f"{core}.multiarray", "scalar")] = Global(f"{core}.multiarray", "scalar", _scalar)
    g[(f"{core}.numeric", "_frombuffer")] = Global(f"{core}.numeric", "_frombuffer", _frombuffer)
  g[("numpy", "ndarray")] = NDARRAY
  g[("numpy", "dtype")] = Global("numpy", "dtype", _dtype)
  for t in NUMPY_TYPES:  # inert values: no opcode can call or change them
    g[("numpy", t.__name__)] = t
  g[("_codecs", "encode")] = Global("_codecs", "encode", _codecs_encode)
  g[("collections", "OrderedDict")] = Global("collections", "OrderedDict", _ordered_dict)
  for mod in ("builtins", "__builtin__"):  # protocols 0-2 name Python 2's module
    g[(mod, "set")] = Global(mod, "set", _set)
    g[(mod, "frozenset")] = Global(mod, "frozenset", _frozenset)
    g[(mod, "bytes")] = Global(mod, "bytes", _bytes)
    g[(mod, "bytearray")] = Global(mod, "bytearray", _bytearray)
  return g


NUMPY_GLOBALS: Mapping[tuple[str, str], Any] = types.MappingProxyType(_numpy_table())
