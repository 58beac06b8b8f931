"""Restricted unpickling: user pickles are data, never code, and never bigger than their file.

``pickle.load`` resolves every global the stream names, calls what it is told to and lets BUILD
set attributes on anything, so a crafted file can run ``os.system`` or rewire the loader for every
later file. ``RestrictedUnpickler`` is the pure-Python unpickler with its own handler for every
opcode that calls or mutates (the C unpickler would hand BUILD straight to numpy, whose dtype
``__setstate__`` trusts field offsets and sizes: a crafted dtype reads out of bounds). It admits:

- globals from a fixed table only, as immutable ``Global`` markers, never the real functions;
  a call (REDUCE) runs the marker's validating wrapper: numpy ``_reconstruct`` / ``scalar`` /
  ``dtype`` / ``_frombuffer``, ``_codecs.encode(text, 'latin1')``, ``set`` / ``frozenset`` /
  ``bytes``, ``OrderedDict()`` (``torch_checkpoint`` adds tensor rebuilding);
- BUILD once, on an array, dtype or OrderedDict such a wrapper has just made: array state is
  checked against its shape and dtype, dtype state must be numpy's own for that type (structured
  and subarray dtypes are refused), OrderedDict state (torch's ``_metadata``) is dropped;
- APPEND / SETITEM / ADDITEMS only into lists / dicts / sets, with keys of plain hashable types;
  no NEWOBJ / OBJ / INST, no out-of-band buffers.

Caps, each a pure function of the file, so a legitimate file of any size loads:

- a length field may not claim more bytes than the file has left;
- work (bytes the wrappers convert or copy) and the expanded size of the result, counting every
  reference each time it occurs (a container item 1, a string or bytes ``1 + len // 16``, an
  array ``1 + size``), are each at most ``BUDGET_PER_BYTE`` units per byte of input plus
  ``BUDGET_BASE``. A "billion laughs" pickle (lists of memo references to one list) is refused
  here, where counting is cheap, instead of being expanded by ``np.asarray`` downstream;
- nesting at most ``MAX_DEPTH`` levels and no reference cycles.

Any failure (truncation, numpy's own checks, ``MemoryError``, ``RecursionError``) is one
``InputError`` line naming the file.
"""

from __future__ import annotations

import collections
import io
import itertools
import math
import os
import pickle
import struct
import types
from typing import Any, Callable, Mapping

import numpy as np

from csa_jax.errors import InputError, fail

try:
  from numpy._core import multiarray as _ma
except ImportError:  # numpy < 2
  from numpy.core import multiarray as _ma  # type: ignore

MAX_DEPTH = 100
MAX_NDIM = 32
BUDGET_PER_BYTE = 8
BUDGET_BASE = 1 << 20
_CHARS_PER_UNIT = 16
_NONE = type(None)
_DICTS = (dict, collections.OrderedDict)


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
  """

  __slots__ = ("module", "name", "call")

  def __init__(self, module: str, name: str, call: Callable | None = None):
    object.__setattr__(self, "module", module)
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "call", call)

  def __repr__(self) -> str:
    return f"{self.module}.{self.name}"


class Budget:
  """Units of work and of expanded result one file may use (see the module docstring).

  Args:
    source: the file, for messages.
    nbytes: bytes of input known up front; ``allow`` adds more (a checkpoint's storages).
  """

  def __init__(self, source: str, nbytes: int = 0):
    self.source = source
    self.limit = BUDGET_BASE + BUDGET_PER_BYTE * nbytes
    self.work = 0

  def allow(self, nbytes: int) -> None:
    self.limit += BUDGET_PER_BYTE * nbytes

  def charge(self, units: int, what: str) -> None:
    self.work += units
    if self.work > self.limit:
      raise fail(self.source, "pickle", f"at most {self.limit} units of work ({BUDGET_PER_BYTE} "
                 "per byte of input)", f"more while {what} (the same data converted over and "
                 "over through memo references)")


def brief(x, depth: int = 1) -> str:
  """A short, one-line description of untrusted ``x`` that never recurses deeply."""
  t = type(x)
  if isinstance(x, Marker):
    return repr(x)
  if t is int:
    return repr(x) if x.bit_length() < 64 else f"an int of {x.bit_length()} bits"
  if t in (float, bool, _NONE):
    return repr(x)
  if t is str:
    return repr(x[:40]) + ("..." if len(x) > 40 else "")
  if t in (bytes, bytearray):
    return f"{t.__name__} of {len(x)} bytes"
  if t is tuple and depth > 0 and len(x) <= 8:
    return "(" + ", ".join(brief(i, depth - 1) for i in x) + ("," if len(x) == 1 else "") + ")"
  if t in (tuple, list, set, frozenset) or t in _DICTS:
    return f"a {t.__name__} of {len(x)} items"
  if t is np.ndarray:
    return f"an array of shape {x.shape} ({x.dtype})"
  if isinstance(x, np.dtype):
    return f"dtype {x.str}"
  if t is type:
    return f"the type {x.__module__}.{x.__name__}"
  return f"a {t.__name__}"


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())[:300]


def _same(a, b) -> bool:
  """Exact equality of ``a`` (untrusted) with ``b`` (a small trusted constant), types included."""
  if type(a) is not type(b):
    return False
  if type(b) is tuple:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return a == b


def _shape(up: RestrictedUnpickler, shape) -> tuple[int, ...]:
  if (type(shape) is not tuple or len(shape) > MAX_NDIM
      or not all(type(s) is int and 0 <= s < 2**62 for s in shape)):
    raise fail(up.source, "pickle", f"an array shape: a tuple of at most {MAX_NDIM} non-negative "
               "ints", brief(shape))
  return shape


# ----------------------------------------------------------------------------------------------
# Validating stand-ins for the globals numpy and the standard library pickle with.


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
    if _same(state, want):
      d.__setstate__(want)
      return
  raise fail(up.source, "pickle", f"numpy's own state for dtype {d.str}",
             f"{brief(state)} (crafted dtype state is not applied)")


def _reconstruct(up: RestrictedUnpickler, subtype, shape, code):
  if subtype is not NDARRAY or not _same(shape, (0,)) or not (_same(code, b"b")
                                                             or _same(code, "b")):
    raise fail(up.source, "pickle", "numpy's _reconstruct(numpy.ndarray, (0,), b'b')",
               f"_reconstruct{brief((subtype, shape, code))}")
  arr = _ma._reconstruct(np.ndarray, (0,), b"b")
  up.fresh(arr, _array_state)
  return arr


def _array_state(up: RestrictedUnpickler, arr: np.ndarray, state) -> None:
  if (type(state) is not tuple or len(state) not in (4, 5)
      or (len(state) == 5 and not _same(state[0], 1))):
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


NDARRAY = Global("numpy", "ndarray")

_NUMPY_TYPES = tuple(getattr(np, t) for t in (
    "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
    "uint32", "uint64", "bool_"))


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
  for t in _NUMPY_TYPES:  # inert values: no opcode can call or change them
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


# ----------------------------------------------------------------------------------------------
# The unpickler.


class _Reader:
  """A file that refuses reads past its known size, so no length field makes us allocate more
  than the file holds, and treats a short read as truncation (the pure-Python unpickler would
  silently accept a short BINBYTES)."""

  def __init__(self, f, size: int, source: str):
    self._f, self.size, self.left, self._source = f, size, size, source

  def _take(self, n: int) -> None:
    if n > self.left:
      raise fail(self._source, "pickle", "a complete pickle", f"a length field claiming {n} "
                 f"bytes with {self.left} left (truncated or crafted)")
    self.left -= n

  def read(self, n: int) -> bytes:
    self._take(n)
    data = self._f.read(n)
    if len(data) != n:
      raise fail(self._source, "pickle", "a complete pickle",
                 f"only {len(data)} of {n} bytes (truncated)")
    return data

  def readinto(self, buf) -> int:
    with memoryview(buf) as m, m.cast("B") as b:
      self._take(b.nbytes)
      got = 0
      while got < b.nbytes:
        k = self._f.readinto(b[got:])
        if not k:
          raise fail(self._source, "pickle", "a complete pickle",
                     f"only {got} of {b.nbytes} bytes (truncated)")
        got += k
      return got

  def readline(self) -> bytes:
    line = self._f.readline(self.left + 1)
    self._take(len(line))
    if not line.endswith(b"\n"):
      raise fail(self._source, "pickle", "a complete pickle", "a line cut off (truncated)")
    return line


class RestrictedUnpickler(pickle._Unpickler):
  """Unpickles data only; see the module docstring for what is admitted.

  Args:
    file: binary file positioned at the pickle.
    size: bytes the pickle may occupy (the file's or zip member's size).
    source: names the file in messages.
    table: (module, name) -> ``Global`` or inert value; ``NUMPY_GLOBALS`` by default.
    persistent: handles persistent ids (``torch_checkpoint``'s storages); refused when None.
    budget: the file's ``Budget``; one for ``size`` bytes by default.
  """

  dispatch = dict(pickle._Unpickler.dispatch)

  def __init__(self, file, size: int, source: str, *,
               table: Mapping[tuple[str, str], Any] | None = None,
               persistent: Callable[[Any], Any] | None = None, budget: Budget | None = None):
    self._reader = _Reader(file, size, source)
    super().__init__(self._reader)
    self.source = source
    self.budget = budget if budget is not None else Budget(source, size)
    self._table = NUMPY_GLOBALS if table is None else table
    self._persistent = persistent
    self._fresh: dict[int, tuple[Any, Callable]] = {}  # objects awaiting their one BUILD
    self.owned: dict[int, Any] = {}  # buffers a writable array already uses

  # Hooks for the wrappers.

  def fresh(self, obj, on_state: Callable) -> None:
    """Registers ``obj`` (just made by a wrapper) as the one target of a later BUILD."""
    self._fresh[id(obj)] = (obj, on_state)

  def take_dtype(self, d) -> np.dtype:
    """``d`` as a dtype argument; once used, it can no longer be BUILT."""
    if not isinstance(d, np.dtype):
      raise fail(self.source, "pickle", "a numpy dtype", brief(d))
    entry = self._fresh.get(id(d))
    if entry is not None and entry[0] is d:
      del self._fresh[id(d)]
    return d

  def check_key(self, k) -> None:
    """Refuses dict keys / set items whose hashing or comparison could be costly or run code."""
    t = type(k)
    if t is int:
      self.budget.charge(1 + k.bit_length() // 64, "hashing keys")  # int hashes are not cached
    elif t is tuple and len(k) <= 64 and all(type(i) in (str, bytes, int, float, bool, _NONE)
                                             for i in k):
      self.budget.charge(1 + sum(i.bit_length() // 64 for i in k if type(i) is int) + len(k),
                         "hashing keys")
    elif not (t in (str, bytes, float, bool, complex, _NONE)
              or isinstance(k, np.generic) and not isinstance(k, np.void)):
      raise fail(self.source, "pickle", "dict keys and set items of plain types (str, int, "
                 "float, tuples of them)", brief(k))

  # Opcode handlers.

  def find_class(self, module: str, name: str):
    try:
      return self._table[(module, name)]
    except KeyError:
      raise InputError(
          f"{self.source}: pickle: expected only data (arrays, lists, dicts), found a reference "
          f"to {module}.{name}; refused without running it") from None

  def persistent_load(self, pid):
    if self._persistent is None:
      raise fail(self.source, "pickle", "no persistent references", brief(pid))
    return self._persistent(pid)

  def _load_reduce(self):
    args = self.stack.pop()
    func = self.stack[-1]
    if not isinstance(func, Global) or func.call is None:
      raise fail(self.source, "pickle", "calls only to allowlisted data constructors",
                 f"a call of {brief(func)}; refused without running it")
    if type(args) is not tuple:
      raise fail(self.source, "pickle", f"a tuple of arguments for {func!r}", brief(args))
    self.stack[-1] = func.call(self, *args)

  def _load_build(self):
    state = self.stack.pop()
    inst = self.stack[-1]
    entry = self._fresh.pop(id(inst), None)
    if entry is None or entry[0] is not inst:
      raise fail(self.source, "pickle", "object state (BUILD) only for a numpy array, dtype or "
                 "OrderedDict just made", f"state for {brief(inst)}; refused")
    entry[1](self, inst, state)

  def _target(self, types_, op: str):
    target = self.stack[-1]
    if type(target) not in types_:
      raise fail(self.source, "pickle", f"{op} into a {' or '.join(t.__name__ for t in types_)}",
                 f"{op} into {brief(target)}")
    return target

  def _load_append(self):
    value = self.stack.pop()
    self._target((list,), "APPEND").append(value)

  def _load_appends(self):
    items = self.pop_mark()
    self._target((list,), "APPENDS").extend(items)

  def _load_setitem(self):
    value = self.stack.pop()
    key = self.stack.pop()
    target = self._target(_DICTS, "SETITEM")
    self.check_key(key)
    target[key] = value

  def _load_setitems(self):
    items = self.pop_mark()
    target = self._target(_DICTS, "SETITEMS")
    if len(items) % 2:
      raise fail(self.source, "pickle", "key/value pairs for SETITEMS", f"{len(items)} items")
    for i in range(0, len(items), 2):
      self.check_key(items[i])
      target[items[i]] = items[i + 1]

  def _load_dict(self):
    items = self.pop_mark()
    if len(items) % 2:
      raise fail(self.source, "pickle", "key/value pairs for DICT", f"{len(items)} items")
    d = {}
    for i in range(0, len(items), 2):
      self.check_key(items[i])
      d[items[i]] = items[i + 1]
    self.append(d)

  def _load_additems(self):
    items = self.pop_mark()
    target = self._target((set,), "ADDITEMS")
    for item in items:
      self.check_key(item)
    target.update(items)

  def _load_frozenset(self):
    items = self.pop_mark()
    for item in items:
      self.check_key(item)
    self.append(frozenset(items))

  def _load_bytearray8(self):
    (n,) = struct.unpack("<Q", self.read(8))
    if n > self._reader.size:
      raise fail(self.source, "pickle", "a complete pickle", f"a BYTEARRAY8 claiming {n} bytes "
                 f"in a {self._reader.size}-byte pickle (truncated or crafted)")
    frame = getattr(getattr(self, "_unframer", None), "current_frame", None)
    if frame is not None and frame.tell() < frame.getbuffer().nbytes:
      self.append(bytearray(self.read(n)))
    else:  # large payloads sit outside frames: read straight into the one buffer
      if frame is not None:
        self._unframer.current_frame = None
      b = bytearray(n)
      self._reader.readinto(b)
      self.append(b)

  def _refuse(op: str):  # noqa: N805  (a handler factory used while the class is built)
    def handler(self):
      raise fail(self.source, "pickle", "only data (arrays, lists, dicts)",
                 f"an object construction ({op}); refused without running it")
    return handler

  def _load_next_buffer(self):
    raise fail(self.source, "pickle", "data inside the pickle", "an out-of-band buffer reference")

  for _op, _fn in ((pickle.REDUCE, _load_reduce), (pickle.BUILD, _load_build),
                   (pickle.APPEND, _load_append), (pickle.APPENDS, _load_appends),
                   (pickle.SETITEM, _load_setitem), (pickle.SETITEMS, _load_setitems),
                   (pickle.DICT, _load_dict),
                   (pickle.ADDITEMS, _load_additems), (pickle.FROZENSET, _load_frozenset),
                   (pickle.BYTEARRAY8, _load_bytearray8), (pickle.NEXT_BUFFER, _load_next_buffer),
                   (pickle.NEWOBJ, _refuse("NEWOBJ")), (pickle.NEWOBJ_EX, _refuse("NEWOBJ_EX")),
                   (pickle.OBJ, _refuse("OBJ")), (pickle.INST, _refuse("INST"))):
    dispatch[_op[0]] = _fn
  del _op, _fn, _refuse


# ----------------------------------------------------------------------------------------------
# The result: data only, and bounded once expanded.


def _leaf_cost(x, source: str) -> int | None:
  """Units for a leaf, None for a container to descend into; anything else is refused."""
  t = type(x)
  if t is str or t is bytes or t is bytearray:
    return 1 + len(x) // _CHARS_PER_UNIT
  if t is int:
    return 1 + x.bit_length() // 64
  if t in (float, bool, complex, _NONE):
    return 1
  if t is np.ndarray:
    return None if x.dtype.hasobject else 1 + x.size
  if t in (list, tuple, set, frozenset) or t in _DICTS:
    return None
  if isinstance(x, (str, bytes)):  # numpy's str_ / bytes_ scalars
    return 1 + len(x) // _CHARS_PER_UNIT
  if isinstance(x, (np.generic, np.dtype)) or (t is type and x in _NUMPY_TYPES):
    return 1
  if t in (memoryview, pickle.PickleBuffer):
    with memoryview(x) as m:
      return 1 + m.nbytes // _CHARS_PER_UNIT
  raise fail(source, "pickle", "only data (arrays, lists, dicts, strings, numbers)",
             f"{brief(x)} in the result")


def _children(x):
  if type(x) in _DICTS:
    return itertools.chain.from_iterable(x.items())
  if type(x) is np.ndarray:
    return x.flat
  return iter(x)


def check_graph(root, budget: Budget) -> int:
  """Refuses a result that holds anything but data, nests deeper than ``MAX_DEPTH``, has a
  reference cycle, or expands to more than ``budget.limit`` units.

  Shared containers are costed once and their cost reused per reference, so the walk is linear
  in the distinct objects however large the expansion. Returns the expanded size in units.
  """
  source, limit = budget.source, budget.limit

  def too_big():
    return fail(source, "pickle", f"data that expands to at most {limit} items "
                f"({BUDGET_PER_BYTE} per byte of input)", "more (shared references that multiply "
                "when expanded: a 'billion laughs' pickle)")

  cost = _leaf_cost(root, source)
  if cost is not None:
    if cost > limit:
      raise too_big()
    return cost
  done: dict[int, int] = {}
  active = {id(root)}
  frames = [[root, _children(root), 1]]  # [container, its remaining children, units so far]
  while True:
    frame = frames[-1]
    for child in frame[1]:
      c = _leaf_cost(child, source)
      if c is None:
        c = done.get(id(child))
        if c is None:
          if id(child) in active:
            raise fail(source, "pickle", "data without reference cycles",
                       f"{brief(child)} that contains itself")
          if len(frames) >= MAX_DEPTH:
            raise fail(source, "pickle", f"nesting at most {MAX_DEPTH} levels deep",
                       "deeper nesting")
          active.add(id(child))
          frames.append([child, _children(child), 1])
          break
      frame[2] += c
      if frame[2] > limit:
        raise too_big()
    else:
      frames.pop()
      active.discard(id(frame[0]))
      done[id(frame[0])] = frame[2]
      if not frames:
        return frame[2]
      frames[-1][2] += frame[2]
      if frames[-1][2] > limit:
        raise too_big()


def unpickle(file, size: int, source: str, *, table: Mapping[tuple[str, str], Any] | None = None,
             persistent: Callable[[Any], Any] | None = None, budget: Budget | None = None) -> Any:
  """Unpickles and checks one pickle; every failure is an ``InputError`` naming ``source``.

  Args: as ``RestrictedUnpickler``.
  Returns:
    The object tree: builtin containers, numbers, strings, numpy arrays / dtypes / scalars.
  """
  try:
    up = RestrictedUnpickler(file, size, source, table=table, persistent=persistent,
                             budget=budget)
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
               f"an unreadable stream ({type(e).__name__}: {_one_line(e)})") from None


def loads_data(data: bytes, source: str = "<bytes>") -> Any:
  """Unpickles numpy arrays, dtypes and builtin containers; refuses everything else."""
  return unpickle(io.BytesIO(data), len(data), source)


def load_data(path) -> Any:
  """``loads_data`` for a file path, streamed (a multi-GB pickle is not held twice)."""
  try:
    f = open(path, "rb")
  except OSError as e:
    raise fail(str(path), "file", "a readable pickle", e.strerror or type(e).__name__) from None
  with f:
    return unpickle(f, os.fstat(f.fileno()).st_size, str(path))
