""".npy / .npz reading that checks before it allocates: the one reader of user numpy files.

``np.load`` trusts the file: it allocates whatever shape the header claims (a 780-byte .npz can
ask for 373 GiB), inflates a zip member as far as it goes, and reads object arrays when asked.
Here every header is parsed first and the array is read only if its dtype is plain numeric (or
bounded text, as exports store JSON) and shape x itemsize matches the bytes really present: the
file size for a .npy; for an .npz member its declared size, what deflate could produce from its
compressed bytes, and what it actually inflates to, read no further than the array needs. Even
a consistent array is refused when it would not fit in the memory the process has left (an honest
deflate bomb inflates 1000-fold). An .npz holds at most ``MAX_MEMBERS`` members named
'<key>.npy', stored or deflated. A problem is one ``InputError`` line naming the file and the
member (field 'file' for a .npy or the archive as a whole).

Files are opened through ``regular_file.open_regular`` (a FIFO or device is refused at once) and
a memory map is made from that open file, so what was checked is what gets mapped.
``export.load_export`` reads through ``load_npz`` too.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npformat

from csa_jax.errors import InputError, fail
from csa_jax.formats.regular_file import format_size, open_regular, read_into

MAX_MEMBERS = 4096  # an export has a few hundred; more is not a file we wrote or expect
MAX_NAME_CHARS = 256
MAX_HEADER_BYTES = 1 << 16  # numpy itself refuses headers over 10000 characters
MAX_NDIM = 32
MAX_TEXT_BYTES = 64 << 20  # text arrays (JSON in exports, names) are never large
# Deflate cannot inflate one byte into more than 1032: a member declaring more lies. Other zip
# methods (bzip2, lzma) have no useful bound and numpy never writes them.
MAX_DEFLATE_RATIO = 1032
_NUMERIC_KINDS = "biuf"
_TEXT_KINDS = "US"


def load_npy(path, mmap: bool = False) -> np.ndarray:
  """The array of a .npy file, validated before anything is allocated.

  Args:
    path: the file.
    mmap: return a read-only ``np.memmap`` instead of reading the data (R1M: never read whole).

  Returns:
    The array (an ``np.memmap`` with ``mmap`` when it holds any data).
  """
  path = os.fspath(path)
  f, size = open_regular(path, "a readable .npy file")
  with f:
    try:
      shape, fortran, dtype, offset = _read_header(f, path, "file")
      nbytes = _check(shape, dtype, path, "file")
      _check_present(nbytes, size - offset, path, "file", "the file")
      if not (mmap and nbytes):  # an empty memmap cannot be made
        return _read_exact(f, shape, fortran, dtype, nbytes, path, "file")
    except OSError as e:
      raise fail(path, "file", "a readable .npy file", e.strerror or type(e).__name__) from None
    try:
      # The open file, not the path: what was checked is what gets mapped.
      return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape,
                       order="F" if fortran else "C")
    except (OSError, ValueError) as e:
      raise fail(path, "file", "a .npy file that can be memory-mapped",
                 f"{type(e).__name__}: {e}") from None


def load_npz(path) -> dict[str, np.ndarray]:
  """Every array of an .npz file (``np.savez`` / ``np.savez_compressed``), by key.

  Args:
    path: the file.

  Returns:
    {key: array}, keys as ``np.load`` names them (the member name without '.npy').
  """
  path = os.fspath(path)
  f, _ = open_regular(path, "a readable .npz file")
  try:
    with f, zipfile.ZipFile(f) as zf:
      infos = _members(zf, path)
      return {key: _read_member(zf, info, path, key) for key, info in infos.items()}
  except InputError:
    raise
  except OSError as e:
    raise fail(path, "file", "a readable .npz file", e.strerror or type(e).__name__) from None
  except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
          ValueError, struct.error, OverflowError) as e:  # what zipfile raises for damage
    msg = " ".join(str(e).split())[:200]  # one line, whatever the message
    raise fail(path, "file", "a complete .npz file", f"unreadable ({type(e).__name__}: {msg})") \
        from None


def _members(zf: zipfile.ZipFile, path: str) -> dict[str, zipfile.ZipInfo]:
  infos = zf.infolist()
  if len(infos) > MAX_MEMBERS:
    raise fail(path, "file", f"an .npz of at most {MAX_MEMBERS} arrays", f"{len(infos)} members")
  out = {}
  for info in infos:
    name = info.filename
    shown = repr(name[:60] + ("..." if len(name) > 60 else ""))
    if (len(name) > MAX_NAME_CHARS or not name.endswith(".npy")
        or any(ord(ch) < 32 for ch in name)):
      raise fail(path, "file", f"members named '<key>.npy' (at most {MAX_NAME_CHARS} printable "
                 "characters), as numpy.savez writes", f"a member named {shown}")
    key = name[:-len(".npy")]
    if key in out:
      raise fail(path, key, "one member per key", "the key twice")
    if info.flag_bits & 0x1:
      raise fail(path, key, "an unencrypted member", "an encrypted one")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
      raise fail(path, key, "a stored or deflated member (as numpy.savez writes)",
                 f"zip compression method {info.compress_type}")
    limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else \
        info.compress_size * MAX_DEFLATE_RATIO + 64
    if info.file_size > limit:
      raise fail(path, key, f"a declared size that {info.compress_size} compressed bytes can "
                 "hold", f"{info.file_size} bytes declared (a zip bomb or a lying header)")
    out[key] = info
  return out


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, key: str) -> np.ndarray:
  with zf.open(info) as f:
    shape, fortran, dtype, offset = _read_header(f, path, key)
    nbytes = _check(shape, dtype, path, key)
    _check_present(nbytes, info.file_size - offset, path, key, "the member's declared size")
    arr = _read_exact(f, shape, fortran, dtype, nbytes, path, key)
    # One byte more must be the end: also where zipfile checks the member's CRC.
    if f.read(1):
      raise fail(path, key, f"{nbytes} bytes of array data", "more data than the header says")
  return arr


def _read_header(f, path: str, field: str):
  """(shape, fortran_order, dtype, data offset) of the .npy stream at ``f``'s start."""
  magic = f.read(8)
  if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
    raise fail(path, field, "a complete .npy file", f"unreadable (magic {magic[:8]!r})")
  version = (magic[6], magic[7])
  if version not in ((1, 0), (2, 0)):
    raise fail(path, field, ".npy format version 1.0 or 2.0", f"version {version[0]}."
               f"{version[1]}")
  fmt = "<H" if version == (1, 0) else "<I"
  raw_len = f.read(struct.calcsize(fmt))
  if len(raw_len) < struct.calcsize(fmt):
    raise fail(path, field, "a complete .npy file", "unreadable (it ends inside the header)")
  (hlen,) = struct.unpack(fmt, raw_len)
  # numpy would allocate the claimed length (up to 4 GiB) before reading it.
  if hlen > MAX_HEADER_BYTES:
    raise fail(path, field, f"a .npy header of at most {MAX_HEADER_BYTES} bytes",
               f"{hlen} bytes claimed")
  header = f.read(hlen)
  if len(header) < hlen:
    raise fail(path, field, "a complete .npy file",
               f"unreadable (a header of {len(header)} of {hlen} bytes)")
  reader = npformat.read_array_header_1_0 if version == (1, 0) else \
      npformat.read_array_header_2_0
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # numpy warns about Python 2 headers: still valid
      shape, fortran, dtype = reader(io.BytesIO(raw_len + header),
                                     max_header_size=MAX_HEADER_BYTES)
  except Exception as e:  # noqa: BLE001  (any parse failure of the literal is a bad header)
    msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise fail(path, field, "a complete .npy file", f"unreadable header ({msg})") from None
  return shape, fortran, dtype, 8 + len(raw_len) + hlen


def _check(shape, dtype: np.dtype, path: str, field: str) -> int:
  """The array's byte size, once its dtype and shape are acceptable."""
  if dtype.hasobject:
    raise fail(path, field, "numeric arrays", "an object array (pickled Python objects)")
  if dtype.kind not in _NUMERIC_KINDS + _TEXT_KINDS or dtype.fields is not None \
      or dtype.subdtype is not None:
    raise fail(path, field, "a numeric (bool, int, float) or text array", f"dtype {dtype}")
  if dtype.itemsize == 0:
    raise fail(path, field, "a dtype of non-zero size", f"dtype {dtype}")
  if len(shape) > MAX_NDIM:
    raise fail(path, field, f"at most {MAX_NDIM} dimensions", f"{len(shape)}")
  if any(d < 0 for d in shape):
    raise fail(path, field, "non-negative dimensions", f"shape {shape}")
  nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
  if dtype.kind in _TEXT_KINDS and nbytes > MAX_TEXT_BYTES:
    raise fail(path, field, f"text of at most {MAX_TEXT_BYTES >> 20} MiB",
               f"{format_size(nbytes)} (shape {shape}, {dtype})")
  return nbytes


def _check_present(nbytes: int, present: int, path: str, field: str, where: str) -> None:
  if nbytes != present:
    what = "a truncated file or a header that lies" if nbytes > present else "extra bytes"
    raise fail(path, field, f"a complete .npy file: {format_size(nbytes)} of array data as the "
               "header claims", f"{max(present, 0)} bytes in {where} ({what})")


def _read_exact(f, shape, fortran: bool, dtype: np.dtype, nbytes: int, path: str,
                field: str) -> np.ndarray:
  """Reads exactly ``nbytes`` (checked against the file beforehand) into a fresh array."""
  left = _memory_left()
  if left is not None and nbytes > left:
    raise fail(path, field,
               f"an array that fits in the memory left, {format_size(max(left, 0))}",
               f"{format_size(nbytes)} for shape {shape} {dtype}")
  try:
    buf = np.empty(nbytes, np.uint8)
  except MemoryError:
    raise fail(path, field, "an array that fits in memory",
               f"{format_size(nbytes)} for shape {shape} {dtype}") from None
  got = read_into(f, buf)
  if got < nbytes:
    raise fail(path, field, f"{format_size(nbytes)} of array data",
               f"only {got} bytes (truncated)")
  arr = buf.view(dtype)
  if fortran:
    return arr.reshape(shape[::-1]).transpose()
  return arr.reshape(shape)


def _memory_left() -> int | None:
  """Bytes this process can still allocate, as far as it can tell (None: no idea).

  The least of its address-space limit less what it maps now and the memory the system has
  available (with free swap): an honest .npz member can inflate 1000-fold, so a few MB of file may
  legitimately ask for more than the machine has, and that is refused before allocating.
  """
  left = []
  try:
    import resource  # POSIX only
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
      with open("/proc/self/statm") as f:
        left.append(soft - int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE"))
  except (ImportError, OSError, ValueError, IndexError):
    pass
  try:
    with open("/proc/meminfo") as f:
      info = dict(line.split(":", 1) for line in f if ":" in line)
    left.append((int(info["MemAvailable"].split()[0]) + int(info["SwapFree"].split()[0])) << 10)
  except (OSError, ValueError, KeyError, IndexError):
    pass
  return min(left) if left else None
