"""Reads an original ``torch.save`` checkpoint without torch and without trusting it.

A ``.pth`` (torch >= 1.6) is a zip holding ``<name>/data.pkl`` (the object tree),
``<name>/byteorder`` and ``<name>/data/<key>`` (raw tensor storages). ``data.pkl`` is unpickled
by ``safe_pickle`` with the stand-ins of ``torch_globals``, so no torch code and no other global
ever runs.

Everything is checked before memory is touched. A storage is read from a zip member whose header
is plausible for the archive and never beyond the bytes its persistent id declares (so neither a
zip bomb nor a lying header can exhaust memory), into a private typed buffer of that element
count. The byte order is 'little' or 'big'.
"""

from __future__ import annotations

import os
import zipfile

import ml_dtypes
import numpy as np

from csa_jax.errors import InputError, fail
from csa_jax.formats.regular_file import open_regular
from csa_jax.formats.safe_pickle import Budget, brief, unpickle
from csa_jax.formats.torch_globals import (STORAGE_TYPES, TORCH_GLOBALS, Storage, StorageType,
                                           check_view)

__all__ = ["STORAGE_TYPES", "TORCH_GLOBALS", "check_view", "read_torch_file"]

_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand more than this: a header claiming more lies
_BYTEORDER_MAX = 16
_CHUNK = 1 << 24


class _Archive:
  """One opened checkpoint: member checks, storages, and the unpickling of ``data.pkl``."""

  def __init__(self, zf: zipfile.ZipFile, path: str, size: int):
    self.zf, self.path, self.size = zf, path, size
    self.infos: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
      if info.filename in self.infos:
        raise fail(path, info.filename, "one zip member per name", "duplicates")
      self.infos[info.filename] = info
    pkl = [n for n in self.infos if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise fail(path, "data.pkl", "one object tree in the zip", str(len(pkl)))
    self.pkl = pkl[0]
    self.prefix = pkl[0][: -len("data.pkl")]
    self.source = f"{path}: data.pkl"
    self.cache: dict[str, Storage] = {}
    self.storage_bytes = 0  # compressed bytes of storages read: overlapping members add up
    self.budget: Budget | None = None
    self.order = self._byteorder()

  def member(self, name: str) -> zipfile.ZipInfo | None:
    """The member's header, if plausible for this archive (sizes are only claims until read)."""
    info = self.infos.get(name)
    if info is None:
      return None
    if info.compress_type == zipfile.ZIP_STORED:
      ok = info.file_size == info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
      ok = info.file_size <= _DEFLATE_MAX_RATIO * info.compress_size + 64
    else:
      raise fail(self.path, name, "a stored or deflated zip member",
                 f"compression method {info.compress_type}")
    if not ok or info.header_offset + info.compress_size > self.size:
      raise fail(self.path, name, f"a zip member inside the {self.size}-byte archive",
                 f"a header declaring {info.file_size} bytes ({info.compress_size} compressed, "
                 f"at offset {info.header_offset})")
    return info

  def _read(self, info: zipfile.ZipInfo, out) -> int:
    """Reads at most ``len(out)`` bytes of a member into ``out``; returns how many arrived."""
    got = 0
    try:
      with self.zf.open(info) as f:
        with memoryview(out) as m:
          while got < len(m):
            chunk = f.read(min(len(m) - got, _CHUNK))
            if not chunk:
              break
            m[got:got + len(chunk)] = chunk
            got += len(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
      raise fail(self.path, info.filename, "a readable zip member",
                 f"{type(e).__name__}: {e}") from None
    return got

  def _byteorder(self) -> str:
    info = self.member(self.prefix + "byteorder")
    if info is None:
      return "little"  # torch wrote no byteorder before 1.10 and only ran little-endian
    if info.file_size > _BYTEORDER_MAX:
      raise fail(self.path, info.filename, "'little' or 'big'", f"{info.file_size} bytes")
    buf = bytearray(info.file_size)
    text = bytes(buf[: self._read(info, buf)]).decode("ascii", "replace").strip()
    if text not in ("little", "big"):
      raise fail(self.path, info.filename, "'little' or 'big'", repr(text))
    return text

  def storage(self, pid) -> Storage:
    """``persistent_load``: the storage a ``('storage', type, key, location, numel)`` id names."""
    if not (type(pid) is tuple and len(pid) == 5 and type(pid[0]) is str
            and pid[0] == "storage"):
      raise fail(self.source, "persistent id", "('storage', type, key, location, numel)",
                 brief(pid))
    _, stype, key, location, numel = pid
    if type(stype) is not StorageType or STORAGE_TYPES.get(stype.name) is not stype:
      raise fail(self.source, "persistent id", f"a storage type ({', '.join(STORAGE_TYPES)})",
                 brief(stype))
    if type(key) is not str or type(location) is not str:
      raise fail(self.source, "persistent id", "a string key and location",
                 brief((key, location)))
    if type(numel) is not int or numel < 0:
      raise fail(self.source, "persistent id", "a non-negative int element count", brief(numel))
    cached = self.cache.get(key)
    if cached is not None:
      if cached.stype is not stype or cached.array.size != numel:
        raise fail(self.source, "persistent id", f"storage {key} as first declared "
                   f"({cached.stype!r}, {cached.array.size} elements)", f"{stype!r}, {numel}")
      return cached
    self.cache[key] = s = self._load_storage(key, stype, numel)
    return s

  def _load_storage(self, key: str, stype: StorageType, numel: int) -> Storage:
    name = f"{self.prefix}data/{key}"
    info = self.member(name)
    if info is None:
      raise fail(self.path, name, "a tensor storage", "none")
    item = stype.dtype.itemsize
    need = numel * item
    if info.file_size < need:
      raise fail(self.path, name, f"{numel} elements",
                 f"{info.file_size // item} ({info.file_size} bytes in the zip)")
    self.storage_bytes += info.compress_size
    if self.storage_bytes > self.size:
      raise fail(self.path, name, "storages that fit in the archive",
                 f"members overlapping each other ({self.storage_bytes} bytes declared in a "
                 f"{self.size}-byte file)")
    buf = bytearray(need)
    got = self._read(info, buf)
    if got != need:
      raise fail(self.path, name, f"{numel} elements ({need} bytes)", f"only {got} bytes")
    self.budget.allow(need)
    if stype.dtype == np.bool_:
      arr = np.frombuffer(buf, np.uint8) != 0  # bytes other than 0/1 are not valid numpy bools
    else:
      arr = np.frombuffer(buf, stype.dtype.newbyteorder("<" if self.order == "little" else ">"))
      if stype.dtype == ml_dtypes.bfloat16:  # numpy code downstream treats bfloat16 as opaque
        arr = arr.astype(np.float32)
      elif not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return Storage(key, stype, arr)

  def load(self):
    info = self.member(self.pkl)
    self.budget = Budget(self.source, info.file_size)
    try:
      f = self.zf.open(info)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
      raise fail(self.path, info.filename, "a readable zip member",
                 f"{type(e).__name__}: {e}") from None
    with f:
      return unpickle(f, info.file_size, self.source, table=TORCH_GLOBALS,
                      persistent=self.storage, budget=self.budget)


def read_torch_file(path) -> object:
  """The object tree of a zip-format ``torch.save`` file, tensors as numpy arrays.

  Args:
    path: the ``.pth`` file.

  Returns:
    Builtin containers, numbers, strings and numpy arrays (bfloat16 tensors as float32).

  Raises:
    InputError: the file is missing, not a zip checkpoint, or anything in it is malformed or
      inconsistent (one line naming the file and the member or field).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise InputError(f"{path}: file: expected a torch checkpoint, found no such file")
  f, size = open_regular(path, "a readable torch checkpoint")  # a FIFO would block is_zipfile
  try:
    with f:
      if not zipfile.is_zipfile(f):
        raise InputError(f"{path}: format: expected a zip-format torch.save file (torch >= 1.6)"
                         ", found something else (re-save legacy checkpoints with a recent "
                         "torch)")
      with zipfile.ZipFile(f) as zf:
        return _Archive(zf, path, size).load()
  except InputError:
    raise
  except MemoryError:
    raise fail(path, "file", "a checkpoint that fits in memory", "a MemoryError while reading") \
        from None
  except Exception as e:  # a corrupt zip directory
    raise fail(path, "zip", "a readable torch.save archive",
               f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
