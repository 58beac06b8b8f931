""".npy files and zip (.npz) archives written by hand, as an attacker would: headers, sizes and
CRCs say whatever they are told, and a deflate bomb is built without ever being inflated.

Shared by ``tests/cli/test_hostile_data.py`` and ``tests/data/test_readers.py``.
"""

from __future__ import annotations

import io
import struct
import zlib


def npy_bytes(shape, descr="<f4", data: bytes = b"", version=(1, 0),
              header_len: int | None = None) -> bytes:
  """A .npy file whose header says ``shape`` / ``descr``, followed by ``data`` (whatever it is).

  header_len: the header length field, when it should lie.
  """
  d = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, tuple(shape))
  pre = 10 if version == (1, 0) else 12
  h = (d + " " * ((-(pre + len(d) + 1)) % 64) + "\n").encode("latin1")
  length = struct.pack("<H" if version == (1, 0) else "<I",
                       len(h) if header_len is None else header_len)
  return b"\x93NUMPY" + bytes(version) + length + h + data


def zip_bytes(members) -> bytes:
  """A zip archive; members: (name, stored bytes, method 0/8, crc32, declared uncompressed size).

  Sizes and CRCs are written as given, so they may lie.
  """
  out, central = io.BytesIO(), []
  for name, stored, method, crc, size in members:
    offset, nm = out.tell(), name.encode()
    out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(stored),
                          size, len(nm), 0) + nm + stored)
    central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc,
                               len(stored), size, len(nm), 0, 0, 0, 0, 0, offset) + nm)
  start = out.tell()
  for c in central:
    out.write(c)
  out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central),
                        out.tell() - start, start, 0))
  return out.getvalue()


def deflate(data: bytes) -> bytes:
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  return c.compress(data) + c.flush()


def deflate_bomb(head: bytes, zero_mib: int) -> bytes:
  """A raw deflate stream of ``head`` then ``zero_mib`` MiB of zeros, built without inflating:
  one self-contained compressed MiB of zeros (about 1 KB) repeated."""
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  chunk = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
  return first + chunk * zero_mib + b"\x03\x00"  # an empty final block ends the stream


def npz_member(name: str, raw: bytes, method: int = 8, size: int | None = None):
  stored = deflate(raw) if method == 8 else raw
  return (name, stored, method, zlib.crc32(raw), len(raw) if size is None else size)
