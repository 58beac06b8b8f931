"""The pure-Python unpickler with its own handler for every opcode that calls or mutates.

``pickle.load`` resolves every global the stream names, calls what it is told to and lets BUILD
set attributes on anything, so a crafted file can run ``os.system`` or rewire the loader for every
later file. The C unpickler would also hand BUILD straight to numpy, whose dtype ``__setstate__``
trusts field offsets and sizes (a crafted dtype reads out of bounds). ``RestrictedUnpickler``
therefore admits:

- globals from a fixed table only (the caller's: ``pickle_globals.NUMPY_GLOBALS`` via
  ``safe_pickle``), as immutable
  ``Global`` markers, never the real functions; a call (REDUCE) runs the marker's validating
  stand-in;
- BUILD once, on an object a stand-in has just registered with ``fresh``;
- APPEND / SETITEM / ADDITEMS only into lists / dicts / sets, with keys of plain hashable types;
  no NEWOBJ / OBJ / INST, no out-of-band buffers;
- no length field claiming more bytes than the file has left (``_Reader``).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, Callable, Mapping

import numpy as np

from csa_jax.errors import InputError, fail
from csa_jax.formats.pickle_limits import Budget
from csa_jax.formats.pickle_markers import DICT_TYPES, NONE_TYPE, Global, brief
from csa_jax.formats.regular_file import read_into


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
    with memoryview(buf) as m:
      n = m.nbytes
    self._take(n)
    got = read_into(self._f, buf)
    if got < n:
      raise fail(self._source, "pickle", "a complete pickle",
                 f"only {got} of {n} bytes (truncated)")
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
    table: (module, name) -> ``Global`` or inert value (``safe_pickle`` passes
      ``NUMPY_GLOBALS`` by default); the stand-ins are given this unpickler, so the table is an
      argument rather than an import.
    persistent: handles persistent ids (``torch_file``'s storages); refused when None.
    budget: the file's ``Budget``; one for ``size`` bytes by default.
  """

  dispatch = dict(pickle._Unpickler.dispatch)

  def __init__(self, file, size: int, source: str, *,
               table: Mapping[tuple[str, str], Any],
               persistent: Callable[[Any], Any] | None = None, budget: Budget | None = None):
    self._reader = _Reader(file, size, source)
    super().__init__(self._reader)
    self.source = source
    self.budget = budget if budget is not None else Budget(source, size)
    self._table = table
    self._persistent = persistent
    self._fresh: dict[int, tuple[Any, Callable]] = {}  # objects awaiting their one BUILD
    self.owned: dict[int, Any] = {}  # buffers a writable array already uses

  # Hooks for the stand-ins (pickle_globals).

  def fresh(self, obj, on_state: Callable) -> None:
    """Registers ``obj`` (just made by a stand-in) as the one target of a later BUILD.

    Args:
      obj: the new array, dtype or OrderedDict.
      on_state: ``on_state(unpickler, obj, state)`` checks and applies the BUILD state.
    """
    self._fresh[id(obj)] = (obj, on_state)

  def take_dtype(self, d) -> np.dtype:
    """``d`` as a dtype argument; once used, it can no longer be BUILT.

    Args:
      d: the argument as the stream gives it.

    Returns:
      ``d``, now checked to be a dtype.
    """
    if not isinstance(d, np.dtype):
      raise fail(self.source, "pickle", "a numpy dtype", brief(d))
    entry = self._fresh.get(id(d))
    if entry is not None and entry[0] is d:
      del self._fresh[id(d)]
    return d

  def check_key(self, k) -> None:
    """Refuses dict keys / set items whose hashing or comparison could be costly or run code.

    Args:
      k: the key as the stream gives it; ints and tuples are charged to the budget.
    """
    t = type(k)
    if t is int:
      self.budget.charge(1 + k.bit_length() // 64, "hashing keys")  # int hashes are not cached
    elif t is tuple and len(k) <= 64 and all(type(i) in (str, bytes, int, float, bool, NONE_TYPE)
                                             for i in k):
      self.budget.charge(1 + sum(i.bit_length() // 64 for i in k if type(i) is int) + len(k),
                         "hashing keys")
    elif not (t in (str, bytes, float, bool, complex, NONE_TYPE)
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
    target = self._target(DICT_TYPES, "SETITEM")
    self.check_key(key)
    target[key] = value

  def _load_setitems(self):
    items = self.pop_mark()
    target = self._target(DICT_TYPES, "SETITEMS")
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
