"""The one way a user's file is opened for reading: regular files only, never blocking.

``open(path)`` on a FIFO waits for a writer forever, and a symlink to ``/dev/zero`` reads until
memory runs out; a directory fails late with an ``IsADirectoryError``. ``open_regular`` opens
without blocking (``O_NONBLOCK``: a FIFO opens at once), asks the open descriptor what it is
(``fstat``, so the answer cannot change between the check and the read) and refuses anything but
a regular file, then hands back a normal blocking file and its size, so every reader can bound
what it reads before it reads or allocates anything. ``read_into`` is the one loop that fills a
buffer from such a file.
"""

from __future__ import annotations

import fcntl
import os
import stat
from typing import BinaryIO

from csa_jax.errors import fail

# Text and JSON documents (names lists, gnd and annotation JSON) are parsed whole, at several
# times their size in Python objects; the largest real one (R1M's names) is about 40 MB.
MAX_TEXT_FILE_BYTES = 1 << 30

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
  """What a file of this ``st_mode`` is, in the words of an error message."""
  for test, name in _KINDS:
    if test(mode):
      return name
  return "a regular file" if stat.S_ISREG(mode) else f"a special file (mode {mode:o})"


def open_regular(path, expected: str = "a readable file",
                 max_bytes: int | None = None) -> tuple[BinaryIO, int]:
  """Opens ``path`` for binary reading if it is a regular file (symlinks followed).

  Args:
    path: the file.
    expected: what the caller wants, for the message when the file cannot be opened at all
      ("a readable names file").
    max_bytes: refuse a larger file (checked from ``fstat``, before any byte is read).

  Returns:
    (file, size): a blocking binary file at offset 0 (the caller closes it) and its size in
    bytes.

  Raises:
    InputError: no such file, unreadable, not a regular file, or larger than ``max_bytes``.
  """
  path = os.fspath(path)
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
  except OSError as e:
    raise fail(path, "file", expected, e.strerror or type(e).__name__) from None
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise fail(path, "file", "a regular file", kind_of(st.st_mode))
    if max_bytes is not None and st.st_size > max_bytes:
      raise fail(path, "file", f"a file of at most {format_size(max_bytes)}",
                 format_size(st.st_size))
    # Reads of a regular file never block anyway; clear the flag so nothing downstream sees it.
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return os.fdopen(fd, "rb"), st.st_size
  except BaseException:
    os.close(fd)
    raise


def read_regular(path, expected: str = "a readable file",
                 max_bytes: int = MAX_TEXT_FILE_BYTES) -> bytes:
  """The whole of a regular file of at most ``max_bytes``, as ``fstat`` sized it when opened.

  Args:
    path: the file.
    expected: what the caller wants, for the message when it cannot be opened or read.
    max_bytes: the size limit, checked before anything is read.

  Returns:
    The file's bytes (no more than its size at opening: a file growing meanwhile is cut there).
  """
  path = os.fspath(path)
  f, size = open_regular(path, expected, max_bytes)
  try:
    with f:
      return f.read(size)
  except OSError as e:
    raise fail(path, "file", expected, e.strerror or type(e).__name__) from None


def check_regular(path, expected: str = "a readable file") -> int:
  """``open_regular`` for a caller that only needs the answer: returns the file's size."""
  f, size = open_regular(path, expected)
  f.close()
  return size


def format_size(nbytes: int) -> str:
  """``nbytes`` for a message: "1.5 GiB (1610612736 bytes)"."""
  for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
    if nbytes >= 1 << shift:
      return f"{nbytes / (1 << shift):.4g} {unit} ({nbytes} bytes)"
  return f"{nbytes} bytes"


READ_CHUNK = 16 << 20  # bytes per readinto call: large copies without a second full-size buffer


def read_into(f, buf) -> int:
  """Fills ``buf`` (any writable C-contiguous buffer: a numpy array, a bytearray) from ``f``'s
  position, ``READ_CHUNK`` bytes per call, until it is full or the file ends.

  One ``readinto`` may return fewer bytes than asked (pipes, signals, network file systems), so
  every reader loops; this is that loop, once. The caller decides what a short read means.

  Args:
    f: a binary file opened for reading.
    buf: where the bytes go.

  Returns:
    The bytes read: ``buf``'s size unless the file ended first.
  """
  with memoryview(buf) as m, m.cast("B") as view:
    got = 0
    while got < len(view):
      k = f.readinto(view[got:got + READ_CHUNK])
      if not k:
        break
      got += k
    return got
