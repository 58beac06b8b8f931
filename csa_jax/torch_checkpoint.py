"""Reads an original ``torch.save`` checkpoint without torch and without trusting it.

A ``.pth`` (torch >= 1.6) is a zip holding ``<name>/data.pkl`` (the object tree) and
``<name>/data/<key>`` (raw little-endian tensor storages). The pickle names storages through
persistent ids and rebuilds tensors with ``torch._utils._rebuild_tensor_v2``; we give those names
numpy stand-ins through ``RestrictedUnpickler`` so no torch code and no other global ever runs.
"""

from __future__ import annotations

import os
import zipfile

import ml_dtypes
import numpy as np

from csa_jax.errors import InputError
from csa_jax.safe_pickle import RestrictedUnpickler, _numpy_globals

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                       metadata=None):
  del requires_grad, hooks, metadata
  item = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)).copy()


def _rebuild_parameter(data, requires_grad=False, hooks=None):
  del requires_grad, hooks
  return data


def _allowed():
  g = dict(_numpy_globals())
  g[("torch._utils", "_rebuild_tensor_v2")] = _rebuild_tensor_v2
  g[("torch._utils", "_rebuild_parameter")] = _rebuild_parameter
  for name, dtype in _STORAGE_DTYPES.items():
    g[("torch", name)] = _StorageType(dtype)
  return g


def read_torch_file(path) -> object:
  """The object tree of a zip-format ``torch.save`` file, tensors as numpy arrays."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise InputError(f"{path}: file: expected a torch checkpoint, found no such file")
  if not zipfile.is_zipfile(path):
    raise InputError(f"{path}: format: expected a zip-format torch.save file (torch >= 1.6), "
                     "found something else (re-save legacy checkpoints with a recent torch)")
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise InputError(f"{path}: data.pkl: expected one object tree in the zip, found {len(pkl)}")
    prefix = pkl[0][: -len("data.pkl")]
    order = "little"
    if prefix + "byteorder" in names:
      order = zf.read(prefix + "byteorder").decode().strip()
    cache: dict[str, np.ndarray] = {}

    def persistent(pid):
      if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
              and isinstance(pid[1], _StorageType)):
        raise InputError(f"{path}: data.pkl: expected tensor storage references, found {pid!r}")
      _, stype, key, _location, numel = pid
      if key not in cache:
        member = f"{prefix}data/{key}"
        if member not in names:
          raise InputError(f"{path}: {member}: expected a tensor storage, found none")
        dtype = stype.dtype.newbyteorder("<" if order == "little" else ">")
        arr = np.frombuffer(zf.read(member), dtype=dtype)
        if arr.size < numel:
          raise InputError(f"{path}: {member}: expected {numel} elements, found {arr.size}")
        # Native byte order and writable; bfloat16 widened since numpy code downstream treats
        # it as an opaque type.
        native = np.float32 if stype.dtype == ml_dtypes.bfloat16 else stype.dtype
        cache[key] = arr.astype(native)
      return cache[key]

    try:
      with zf.open(pkl[0]) as f:
        return RestrictedUnpickler(f, _allowed(), source=f"{path}: data.pkl",
                                   persistent=persistent).load()
    except InputError:
      raise
    except Exception as e:
      raise InputError(f"{path}: data.pkl: expected a readable torch object tree, found "
                       f"{type(e).__name__}: {e}") from None


def load_torch_checkpoint(path, heads: int = 12, **cfg_overrides):
  """An original CSA ``.pth`` -> (params, ModelConfig), torch not needed.

  Accepts ``{'epoch', 'state_dict'}`` (what the original training saves) or a bare state_dict.
  heads: not recorded in the weights' shapes; the paper model has 12.
  """
  from csa_jax.interop import params_from_torch_state_dict

  obj = read_torch_file(path)
  sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
  if not isinstance(sd, dict):
    raise InputError(f"{path}: state_dict: expected a dict of tensors, found {type(obj).__name__}")
  return params_from_torch_state_dict(sd, heads=heads, source=str(path), **cfg_overrides)
