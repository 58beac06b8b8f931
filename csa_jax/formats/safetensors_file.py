"""``.safetensors`` files in numpy, read as hostile input and written as the format specifies.

The layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`` (padded
with spaces), then the byte buffer, which the tensors index completely: offsets relative to the
buffer, no gaps, no overlaps, nothing after the last tensor (so no other format can hide in it).

Reading checks everything the header claims before a byte of tensor data is read or anything is
allocated for it: the length against the file's size and ``MAX_HEADER_BYTES``, the JSON (unique
keys, no NaN constants), every dtype, shape and pair of offsets, each tensor's byte count against
its shape, the coverage of the buffer, and the memory the tensors need against what the process
has left. A problem is one ``InputError`` line naming the file and the field: 'header length',
'header', '__metadata__[.<key>]', a tensor's name, or 'data' for the buffer as a whole. Files are
opened through ``regular_file.open_regular`` (a FIFO or device is refused at once) and read from
that one open file. No ``safetensors`` package is needed.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from typing import Mapping, NamedTuple

import ml_dtypes
import numpy as np

from csa_jax.errors import fail, short_reason
from csa_jax.fileio import atomic_path
from csa_jax.formats.npyio import _memory_left
from csa_jax.formats.regular_file import format_size, open_regular, read_into

__all__ = ["DTYPES", "MAX_HEADER_BYTES", "MAX_NDIM", "METADATA_KEY", "SafetensorsHeader",
           "TensorInfo", "load_safetensors", "read_safetensors_header", "save_safetensors"]

# The reference implementation accepts headers up to 100 MB; a header is ~100 bytes a tensor, so
# 16 MiB still indexes 100k+ tensors while bounding what the JSON parser is handed.
MAX_HEADER_BYTES = 16 << 20
MAX_NDIM = 32
METADATA_KEY = "__metadata__"
_LENGTH_BYTES = 8
_TENSOR_KEYS = ("dtype", "shape", "data_offsets")

# Safetensors dtype codes numpy (with ml_dtypes) can hold, little-endian as the format stores
# them. Not here, so refused: sub-byte floats (F4, F6_*), F8_E8M0 and unknown codes.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"), "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16), "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"), "C64": np.dtype("<c8"),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_CODES = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}


class TensorInfo(NamedTuple):
  """One tensor as the header describes it (checked): dtype code, shape, buffer offsets."""
  dtype: str
  shape: tuple[int, ...]
  begin: int
  end: int


class SafetensorsHeader(NamedTuple):
  """A checked header: tensors in header order, the metadata, where the buffer starts."""
  tensors: dict[str, TensorInfo]
  metadata: dict[str, str]
  data_start: int


def read_safetensors_header(path) -> SafetensorsHeader:
  """The checked header of a ``.safetensors`` file, without reading any tensor data.

  Args:
    path: the file.

  Returns:
    ``SafetensorsHeader(tensors, metadata, data_start)``; ``metadata`` is empty when the file
    has none.
  """
  path = os.fspath(path)
  f, size = open_regular(path, "a readable .safetensors file")
  with f:
    return _read_header(f, size, path)


def load_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Every tensor of a ``.safetensors`` file, and its metadata.

  Args:
    path: the file.

  Returns:
    ({name: array}, metadata): arrays in the file's dtypes (BF16 and F8 as ``ml_dtypes`` types,
    BOOL as numpy bools, any non-zero byte true), native byte order, fresh and writable, in
    header order; metadata is the header's ``__metadata__`` map ({} when absent).
  """
  path = os.fspath(path)
  f, size = open_regular(path, "a readable .safetensors file")
  with f:
    header = _read_header(f, size, path)
    need = size - header.data_start
    left = _memory_left()
    if left is not None and need > left:
      raise fail(path, "data", f"tensors that fit in the memory left, {format_size(max(left, 0))}",
                 format_size(need))
    try:
      f.seek(header.data_start)
      ordered = sorted(header.tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end))
      arrays = {name: _read_tensor(f, info, path, name) for name, info in ordered}
    except OSError as e:
      raise fail(path, "file", "a readable .safetensors file",
                 e.strerror or type(e).__name__) from None
  return {name: arrays[name] for name in header.tensors}, header.metadata


def save_safetensors(path, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
  """Writes ``tensors`` (and ``metadata``) to ``path`` as ``.safetensors``, atomically.

  The header is padded with spaces to a multiple of 8 bytes and tensors are laid out widest
  dtype first (as the reference writer does), so every tensor is aligned to its item size.
  Whatever is at ``path`` is replaced; callers decide whether it may be.

  Args:
    path: the output file.
    tensors: {name: array} of dtypes in ``DTYPES``.
    metadata: {str: str} for ``__metadata__``; None writes none.

  Raises:
    ValueError: a name, metadata entry or dtype the format cannot hold.
  """
  header, arrays = _encode(tensors, metadata)
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(header)))
    f.write(header)
    for arr in arrays:
      f.write(memoryview(arr.reshape(-1).view(np.uint8)))


def _encode(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None):
  """(header bytes, little-endian contiguous arrays in buffer order)."""
  entries = []
  for name, value in tensors.items():
    if not isinstance(name, str) or name == METADATA_KEY:
      raise ValueError(f"save_safetensors: tensor name {name!r}: expected a str other than "
                       f"{METADATA_KEY!r}")
    arr = np.asarray(value)
    code = _CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
      raise ValueError(f"save_safetensors: {name}: dtype {arr.dtype} has no safetensors code "
                       f"(supported: {', '.join(DTYPES)})")
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder == "big"):
      arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    entries.append((name, code, arr if arr.flags.c_contiguous else arr.copy(order="C")))
  entries.sort(key=lambda e: -e[2].dtype.itemsize)  # stable: equal widths keep the caller's order
  head: dict = {}
  if metadata is not None:
    bad = [(k, v) for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
      raise ValueError(f"save_safetensors: {METADATA_KEY}: expected str keys and values, found "
                       f"{bad[0][0]!r}: {type(bad[0][1]).__name__}")
    head[METADATA_KEY] = dict(metadata)
  offset = 0
  for name, code, arr in entries:
    head[name] = {"dtype": code, "shape": list(arr.shape),
                  "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
  text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
  text += b" " * (-(_LENGTH_BYTES + len(text)) % 8)
  if len(text) > MAX_HEADER_BYTES:
    raise ValueError(f"save_safetensors: a header of {len(text)} bytes, over the "
                     f"{MAX_HEADER_BYTES} this reader accepts")
  return text, [arr for _, _, arr in entries]


def _cut(name: str) -> str:
  """A name as an error message shows it: at most 60 characters."""
  return name[:60] + ("..." if len(name) > 60 else "")


def _shown(name: str) -> str:
  return repr(_cut(name))


class _DuplicateKey(Exception):
  pass


def _unique_pairs(pairs):
  out = {}
  for k, v in pairs:
    if k in out:
      raise _DuplicateKey(k)
    out[k] = v
  return out


def _no_constant(name):
  raise ValueError(f"{name} is not JSON")


def _read(f, n: int, path: str) -> bytes:
  """Up to ``n`` bytes of ``f``; a failing read is one line naming the file."""
  try:
    return f.read(n)
  except OSError as e:
    raise fail(path, "file", "a readable .safetensors file",
               e.strerror or type(e).__name__) from None


def _read_header(f, size: int, path: str) -> SafetensorsHeader:
  """Reads and checks the length and the header, leaving ``f`` past it."""
  raw = _read(f, _LENGTH_BYTES, path)
  if len(raw) < _LENGTH_BYTES:
    raise fail(path, "header length", "an 8-byte little-endian header length",
               f"a file of {size} bytes")
  (hlen,) = struct.unpack("<Q", raw)
  if hlen > MAX_HEADER_BYTES:
    raise fail(path, "header length", f"a header of at most {format_size(MAX_HEADER_BYTES)}",
               f"{hlen} bytes claimed")
  if hlen > size - _LENGTH_BYTES:
    raise fail(path, "header length", f"a header within the {size - _LENGTH_BYTES} bytes after "
               "the length", f"{hlen} bytes claimed (a truncated file or a lying length)")
  text = _read(f, hlen, path)
  if len(text) < hlen:
    raise fail(path, "header", f"{hlen} bytes", f"only {len(text)} (a truncated file)")
  if not text.startswith(b"{"):
    raise fail(path, "header", "a JSON object starting with '{'", f"{text[:16]!r}")
  try:
    head = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_pairs,
                      parse_constant=_no_constant)
  except _DuplicateKey as e:
    raise fail(path, "header", "JSON objects whose keys are unique",
               f"the key {_shown(str(e.args[0]))} twice") from None
  except (ValueError, RecursionError) as e:
    raise fail(path, "header", "UTF-8 JSON text", short_reason(e)) from None
  if not isinstance(head, dict):
    raise fail(path, "header", "a JSON object", type(head).__name__)
  buffer_len = size - _LENGTH_BYTES - hlen
  meta = head.pop(METADATA_KEY, None)
  metadata = {} if meta is None else _check_metadata(meta, path)  # null: none, as the reference
  tensors = {name: _check_tensor(_cut(name), entry, buffer_len, path)
             for name, entry in head.items()}
  _check_coverage(tensors, buffer_len, path)
  return SafetensorsHeader(tensors, metadata, _LENGTH_BYTES + hlen)


def _check_metadata(meta, path: str) -> dict[str, str]:
  if not isinstance(meta, dict):
    raise fail(path, METADATA_KEY, "a JSON object of strings", type(meta).__name__)
  for k, v in meta.items():
    if not isinstance(v, str):
      raise fail(path, f"{METADATA_KEY}.{_cut(k)}", "a string", type(v).__name__)
  return meta


def _is_count(x) -> bool:
  return type(x) is int and x >= 0


def _check_tensor(name: str, entry, buffer_len: int, path: str) -> TensorInfo:
  if not isinstance(entry, dict):
    raise fail(path, name, "a JSON object {dtype, shape, data_offsets}", type(entry).__name__)
  keys = sorted(entry)
  if keys != sorted(_TENSOR_KEYS):
    raise fail(path, name, "exactly the keys dtype, shape, data_offsets",
               f"keys {', '.join(_shown(k) for k in keys[:6])}")
  code = entry["dtype"]
  if not isinstance(code, str) or code not in DTYPES:
    raise fail(path, name, f"a dtype of {', '.join(DTYPES)}", _shown(str(code)))
  shape = entry["shape"]
  if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(map(_is_count, shape)):
    raise fail(path, name, f"a shape of at most {MAX_NDIM} non-negative ints",
               _shown(json.dumps(shape)))
  offsets = entry["data_offsets"]
  if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets)):
    raise fail(path, name, "data_offsets [begin, end] of two non-negative ints",
               _shown(json.dumps(offsets)))
  begin, end = offsets
  if begin > end:
    raise fail(path, name, "data_offsets with begin <= end", f"[{begin}, {end}]")
  if end > buffer_len:
    raise fail(path, name, f"data_offsets within the {buffer_len} bytes after the header",
               f"[{begin}, {end}] (a truncated file or an offset out of range)")
  nbytes = math.prod(shape) * DTYPES[code].itemsize  # Python ints: no overflow
  if end - begin != nbytes:
    raise fail(path, name, f"{nbytes} bytes for shape {tuple(shape)} {code}",
               f"data_offsets [{begin}, {end}] ({end - begin} bytes)")
  return TensorInfo(code, tuple(shape), begin, end)


def _check_coverage(tensors: dict[str, TensorInfo], buffer_len: int, path: str) -> None:
  """The tensors index the buffer exactly: from 0, without gaps or overlaps, to its end."""
  cursor, last = 0, None
  for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
    if info.begin < cursor:
      raise fail(path, _cut(name), f"data starting at byte {cursor}, where {_shown(last)} ends",
                 f"data_offsets [{info.begin}, {info.end}] overlapping it")
    if info.begin > cursor:
      raise fail(path, _cut(name), f"data starting at byte {cursor} (the buffer is indexed without "
                 "gaps)", f"data_offsets [{info.begin}, {info.end}], leaving "
                 f"{info.begin - cursor} bytes unindexed")
    cursor, last = info.end, name
  if cursor != buffer_len:
    raise fail(path, "data", f"{cursor} bytes after the header, as the tensors index",
               f"{buffer_len} bytes ({buffer_len - cursor} unindexed at the end)")


def _read_tensor(f, info: TensorInfo, path: str, name: str) -> np.ndarray:
  """Reads the tensor at ``f``'s position (its begin, tensors being read in buffer order)."""
  nbytes = info.end - info.begin
  buf = np.empty(nbytes, np.uint8)
  got = read_into(f, buf)
  if got < nbytes:
    raise fail(path, _cut(name), f"{nbytes} bytes of tensor data", f"only {got} (the file shrank "
               "while it was read)")
  dtype = DTYPES[info.dtype]
  if dtype == np.bool_:
    arr = buf != 0  # bytes other than 0/1 are not valid numpy bools
  else:
    arr = buf.view(dtype)
    if not arr.dtype.isnative:
      arr = arr.astype(arr.dtype.newbyteorder("="))
  return arr.reshape(info.shape)
