"""The globals a ``torch.save`` pickle may name, as validating stand-ins (see ``safe_pickle``).

A checkpoint's ``data.pkl`` names storage types (``torch.FloatStorage``), refers to storages by
persistent id and rebuilds tensors with ``torch._utils._rebuild_tensor_v2``. Here the storage
types are immutable markers from a fixed table of numeric types, a storage is a ``Storage`` only
the archive reader (``pth``) makes, and a tensor is a view with a non-negative int offset, sizes
and strides that lies inside its storage, copied out. ``TORCH_GLOBALS`` adds these to
``NUMPY_GLOBALS``; no torch code and no other global ever runs.
"""

from __future__ import annotations

import math
import types

import ml_dtypes
import numpy as np

from csa_jax.errors import fail
from csa_jax.formats.safe_pickle import (MAX_NDIM, NUMPY_GLOBALS, Global, Marker,
                                         RestrictedUnpickler, brief)

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class StorageType(Marker):
  """``torch.<X>Storage`` as a pickle names it: an immutable marker of the element type."""

  __slots__ = ("name", "dtype")

  def __init__(self, name: str, dtype):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "dtype", np.dtype(dtype))

  def __repr__(self) -> str:
    return f"torch.{self.name}"


STORAGE_TYPES = types.MappingProxyType({n: StorageType(n, d) for n, d in _STORAGE_DTYPES.items()})


class Storage(Marker):
  """One storage of the archive: ``array`` holds exactly its declared elements, native order.

  Made only by the archive reader (``pth``), never by a pickle; ``_rebuild_tensor_v2`` accepts
  nothing else.
  """

  __slots__ = ("key", "stype", "array")

  def __init__(self, key: str, stype: StorageType, array: np.ndarray):
    object.__setattr__(self, "key", key)
    object.__setattr__(self, "stype", stype)
    object.__setattr__(self, "array", array)

  def __repr__(self) -> str:
    return f"storage {self.key!r}"


def check_view(numel: int, offset, size, stride, source: str) -> None:
  """Raises ``InputError`` unless the tensor view lies inside a storage of ``numel`` elements.

  Args:
    numel: elements in the storage.
    offset: the view's first element, as the pickle gives it.
    size: the view's shape, as the pickle gives it.
    stride: elements (not bytes) between neighbours along each dimension, likewise.
    source: names the file in messages.
  """
  if type(offset) is not int or offset < 0:
    raise fail(source, "tensor offset", "a non-negative int", brief(offset))
  for what, v in (("size", size), ("stride", stride)):
    if (type(v) is not tuple or len(v) > MAX_NDIM
        or not all(type(s) is int and s >= 0 for s in v)):
      raise fail(source, f"tensor {what}", f"a tuple of at most {MAX_NDIM} non-negative ints",
                 brief(v))
  if len(size) != len(stride):
    raise fail(source, "tensor stride", f"one stride per dimension ({len(size)})",
               f"{len(stride)} strides")
  if 0 in size:
    return  # no element is read
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= numel:
    raise fail(source, "tensor view", f"elements inside its storage of {numel}",
               f"offset {offset}, size {size}, stride {stride} reaching element {last}")


def _rebuild_tensor_v2(up: RestrictedUnpickler, storage, offset, size, stride,
                       requires_grad=False, hooks=None, metadata=None):
  if type(storage) is not Storage:
    raise fail(up.source, "pickle", "_rebuild_tensor_v2 of a storage from the archive",
               brief(storage))
  arr = storage.array
  check_view(arr.size, offset, size, stride, up.source)
  if type(requires_grad) is not bool or not (hooks is None or isinstance(hooks, dict)) \
      or not (metadata is None or isinstance(metadata, dict)):
    raise fail(up.source, "pickle", "_rebuild_tensor_v2(storage, offset, size, stride, bool, "
               "hooks, metadata)", brief((requires_grad, hooks, metadata)))
  n = math.prod(size)
  up.budget.charge(n * arr.itemsize, "copying tensors")
  if n == 0:
    return np.zeros(size, arr.dtype)
  # Bounds are checked above; a size-1 dimension's stride moves nowhere, so it is zeroed rather
  # than trusted with an arbitrary (possibly overflowing) byte count.
  strides = tuple(0 if k == 1 else s * arr.itemsize for k, s in zip(size, stride))
  view = np.lib.stride_tricks.as_strided(arr[offset:], shape=size, strides=strides,
                                         writeable=False)
  return view.copy()


def _rebuild_parameter(up: RestrictedUnpickler, data, requires_grad=False, hooks=None):
  if type(data) is not np.ndarray or type(requires_grad) is not bool:
    raise fail(up.source, "pickle", "_rebuild_parameter(tensor, bool, hooks)",
               brief((data, requires_grad)))
  return data


def _table():
  g = dict(NUMPY_GLOBALS)
  g[("torch._utils", "_rebuild_tensor_v2")] = Global("torch._utils", "_rebuild_tensor_v2",
                                                     _rebuild_tensor_v2)
  g[("torch._utils", "_rebuild_parameter")] = Global("torch._utils", "_rebuild_parameter",
                                                     _rebuild_parameter)
  for name, stype in STORAGE_TYPES.items():
    g[("torch", name)] = stype
  return types.MappingProxyType(g)


TORCH_GLOBALS = _table()
