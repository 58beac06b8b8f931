"""Descriptor sets too large to read whole (R1M, a user's database), every row still checked.

A native float32 C-order (n, C) ``.npy`` is memory-mapped and scanned a block of rows at a time
(``load_large`` / ``load_r1m``, ``scan_rows``), or handed to the first-round search as
``DeferredRows``, whose rows the search checks as it scores them, so the file is read once. The
rules and messages are ``data.descriptors``' (finite, non-zero, unit-norm rows; rows off unit
norm are re-normalised into one new array that must fit in the memory left); anything else is
read and validated in RAM by ``descriptors.as_descriptors``. Block sizes follow
``descriptors.BLOCK_BYTES``.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np

from csa_jax.core.normalize import NORM_TOL, row_norms
from csa_jax.data import descriptors
from csa_jax.errors import fail
from csa_jax.formats import npyio
from csa_jax.formats.containers import file_format, load_container, pick
from csa_jax.formats.regular_file import format_size, open_regular, read_into

log = logging.getLogger(__name__)


def in_place(mm, dim: int | None = None) -> bool:
  """Whether a ``.npy`` memory map can be used as it lies: native float32, C-order (n, C) with
  n > C (a (C, n) file is transposed in memory), and C = ``dim`` when given."""
  return (isinstance(mm, np.memmap) and mm.dtype == np.dtype(np.float32) and mm.ndim == 2
          and mm.shape[0] > mm.shape[1] > 0 and mm.flags.c_contiguous
          and (dim is None or mm.shape[1] == dim))


def load_r1m(path, dim: int | None = None, *, defer: bool = False):
  """R1M distractors (n, C), every row checked: ``load_large(path, dim, field="r1m")``."""
  return load_large(path, dim, field="r1m", defer=defer)


def load_large(path, dim: int | None = None, field: str = "r1m", key: str | None = None, *,
               defer: bool = False):
  """A large descriptor set (n, C) (R1M, a user's database), every row checked.

  A native float32 (n, C) .npy is memory-mapped, never read whole into RAM: it is scanned a block
  of rows at a time through one reused buffer (finite, non-zero and unit-norm rows; the first bad
  block ends it), then returned as a read-only memmap. Rows to re-normalise are copied, normalised
  a block at a time, into one new array (refused when it would not fit in the memory left).
  With ``defer`` such a file is not scanned here: a ``DeferredRows`` is returned, whose rows the
  first-round search checks as it scores them (the same rules and messages), so the file is read
  once instead of twice. Anything else (a pickle, (C, n), float64) is read and validated in RAM
  like any descriptors.

  Args:
    path: the file.
    dim: the descriptor size C the set must have (the queries' or the test set's), if known.
    field: the name errors and notes give the set ("r1m", "db").
    key: for a dict file, the entry to read when present (else its only entry).
    defer: check a memory-mapped file's rows as the search reads them (``DeferredRows``).

  Returns:
    descriptors_NxC: a read-only float32 memmap, a ``DeferredRows`` (with ``defer``), or a
    float32 array (``as_descriptors``).
  """
  path = os.fspath(path)
  if file_format(path) == "npy":
    mm = load_container(path, mmap=True)
    if mm.ndim == 2 and dim is not None and dim not in mm.shape:  # from the header alone
      raise descriptors.width_error(path, field, mm.shape, dim, None)
    if in_place(mm, dim):
      if defer:
        log.info("%s: %s: found (n, C) = %s; memory-mapped, every row checked as the search "
                 "reads it", path, field, mm.shape)
        return DeferredRows(mm, path, field)
      if scan_rows(path, int(mm.offset), mm.shape, field):
        log.info("%s: %s: found (n, C) = %s; memory-mapped, every row checked", path, field,
                 mm.shape)
        return mm
      log.info("%s: %s: found (n, C) = %s; rows are not unit-norm: reading a re-normalised "
               "copy into memory", path, field, mm.shape)
      offset, shape = int(mm.offset), mm.shape
      del mm  # its address space counts against the memory left for the copy
      return _renormalised(path, offset, shape, field)
    else:
      log.info("%s: %s: not a float32 (n, C) array (shape %s, %s); reading it into memory "
               "(convert it to a float32 (n, C) .npy to memory-map it)", path, field, mm.shape,
               mm.dtype)
    del mm
  obj = load_container(path)
  arr = obj[key] if isinstance(obj, dict) and key in obj else pick(obj, path, None, "descriptors")
  return descriptors.as_descriptors(arr, path, field, dim=dim)


def scan_rows(path: str, offset: int, shape: tuple[int, int], field: str,
              block_rows: int | None = None) -> bool:
  """Checks every row of a native float32 C-order (n, C) array stored at ``offset`` in ``path``.

  Reads ``block_rows`` rows at a time into one buffer, so memory stays bounded whatever the
  file's size, and the page cache, not the process, holds what a later memory map needs. The
  first block holding a bad row ends the scan: an 8 GB file of zeros costs one block.

  Args:
    path: the file.
    offset: byte offset of row 0.
    shape: (n, C).
    field: names the array in messages.
    block_rows: rows per read; by default about ``descriptors.BLOCK_BYTES`` worth.

  Returns:
    Whether every row has unit L2 norm (within ``NORM_TOL``).

  Raises:
    InputError: naming the first row holding a NaN or inf, or the first all-zero row.
  """
  return _scan(path, offset, shape, field, block_rows)[0]


def _scan(path: str, offset: int, shape: tuple[int, int], field: str,
          block_rows: int | None = None, out: np.ndarray | None = None):
  """``scan_rows``; with ``out`` (n, C) float32, also writes the L2-normalised rows there.

  Returns:
    (all rows unit, smallest norm, largest norm).
  """
  n, c = shape
  step = block_rows or descriptors.block_rows(c)
  buf = np.empty((min(step, n), c), np.float32)
  unit, lo, hi = True, np.inf, 0.0
  f, _ = open_regular(path, "a readable .npy file")
  with f:
    f.seek(offset)
    for a in range(0, n, step):
      blk = buf[:min(step, n - a)]
      if read_into(f, blk) != blk.nbytes:  # the file shrank since its header was checked
        raise fail(path, field, f"{n} rows of {c} float32", f"the file ends at row {a}")
      norms, err = _checked_norms(blk, a, n, path, field)
      if err is not None:
        raise err
      unit = unit and bool(np.all(np.abs(norms - 1) <= NORM_TOL))
      lo, hi = min(lo, float(norms.min())), max(hi, float(norms.max()))
      if out is not None:
        floor = np.maximum(norms, descriptors.NORM_FLOOR)
        out[a:a + len(blk)] = (blk / floor[:, None]).astype(np.float32)
  return unit, lo, hi


def _checked_norms(blk_BxC: np.ndarray, a: int, n: int, path: str, field: str):
  """One block of ``_scan``: (float64 row norms, None), or (None, the error for its first bad
  row: NaN/inf rows first, then all-zero ones)."""
  ok = np.isfinite(blk_BxC).all(axis=1)
  if not ok.all():
    return None, fail(path, field, "finite values",
                      f"NaN/inf in row {a + int(np.argmin(ok))} (of {n})")
  norms = row_norms(blk_BxC)
  zero = norms == 0  # any other norm is a direction (float64: no underflow)
  if zero.any():
    return None, fail(path, field, "non-zero descriptors",
                      f"an all-zero row {a + int(np.argmax(zero))} (of {n})")
  return norms, None


def _renormalised(path: str, offset: int, shape: tuple[int, int], field: str) -> np.ndarray:
  """A fresh float32 copy of a checked (n, C) .npy, rows L2-normalised, read a block at a time.

  One output array is the only full-size allocation (reading the file whole first would double
  it), and it is refused before allocation when it would not fit in the memory left.
  """
  nbytes = shape[0] * shape[1] * 4
  left = npyio._memory_left()  # pylint: disable=protected-access
  if left is not None and nbytes > left:
    raise fail(path, field, "unit-norm rows, or a re-normalised copy that fits in the memory "
               f"left, {format_size(max(left, 0))}", f"rows to re-normalise needing "
               f"{format_size(nbytes)} (L2-normalise the file to memory-map it instead)")
  try:
    out = np.empty(shape, np.float32)
  except MemoryError:
    raise fail(path, field, "a re-normalised copy that fits in memory",
               f"{format_size(nbytes)} (L2-normalise the file to memory-map it instead)") \
        from None
  _, lo, hi = _scan(path, offset, shape, field, out=out)
  log.warning("%s: %s: descriptors are not L2-normalised (norms %.4g..%.4g); re-normalising",
              path, field, lo, hi)
  return out


class _NotUnitNorm(Exception):
  """A row a deferred check found off unit norm: the search stops, the rows are re-normalised."""


class DeferredRows:
  """A memory-mapped float32 (n, C) .npy whose rows the search that reads them checks.

  What ``load_large(..., defer=True)`` returns instead of scanning the file first. The first-round
  search (``retrieval.search.top_k_search``, through ``search_checked``) checks every block of
  rows as it scores it, by ``scan_rows``'s rules and with its messages (the first row holding a
  NaN/inf, else the first all-zero row), so the file is read once, not twice. A row that is not
  unit-norm ends that search: the file is then read into a re-normalised copy, as ``load_large``
  does, and searched again. Rows read by index (``rows[idx]``) before a search has checked them
  all have the whole file checked first. Has ``shape``, ``dtype``, ``ndim`` and ``len``.
  """

  def __init__(self, mm: np.memmap, path: str, field: str):
    self._mm = mm
    self._offset = int(mm.offset)
    self.path, self.field = path, field
    self.shape = tuple(int(s) for s in mm.shape)
    self.dtype = np.dtype(np.float32)
    self.ndim = 2
    self._rows = None  # once every row is checked: the memmap, or its re-normalised copy
    self._lock = threading.Lock()
    # A float32 sum of squares is off its exact value by at most (C + 1) * 2**-24 of it: inside
    # this band the row is unit-norm whatever the rounding; only rows outside it are looked at
    # again, in float64, as scan_rows looks at every row.
    slack = 2 * (self.shape[1] + 1) * 2.0**-24
    self._band = ((1 - NORM_TOL)**2 * (1 + slack), (1 + NORM_TOL)**2 * (1 - slack))

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, idx) -> np.ndarray:
    return self.rows()[idx]

  def rows(self):
    """The checked rows: the memmap, or a re-normalised copy (the whole file is checked first
    when no search has checked every row yet)."""
    with self._lock:
      if self._rows is None:
        if self._mm is None:  # a copy that failed: fails again, with its error
          self._rows = self._copy()
        else:
          unit = scan_rows(self.path, self._offset, self.shape, self.field)
          self._rows = self._mm if unit else self._copy()
      return self._rows

  def search_checked(self, search):
    """``search(rows, check)``'s result, every row checked as the search reads it.

    Args:
      search: runs the search over ``rows`` (an (n, C) array) and calls ``check(start,
        rows_BxC)`` on every block of rows it reads, before it uses their scores (from any
        thread; what ``check`` raises must end the search). ``check`` is None once the rows are
        known good.

    Returns:
      What ``search`` returned, for rows that are all finite, non-zero and unit-norm (the
      re-normalised copy when the file's are not).

    Raises:
      InputError: ``scan_rows``'s, for the first row holding a NaN/inf or the first all-zero row.
    """
    if self._rows is not None or self._mm is None:
      return search(self.rows(), None)
    seen = []

    def check(a: int, x_BxC: np.ndarray) -> None:
      self._check(a, x_BxC)
      seen.append(len(x_BxC))

    try:
      out = search(self._mm, check)
    except _NotUnitNorm:
      out = None
    if out is not None:
      if sum(seen) >= self.shape[0]:  # every row was read and checked
        self._rows = self._mm
      return out
    # Outside the except clause: its traceback no longer holds the search's views of the map.
    with self._lock:
      if self._rows is None:
        self._rows = self._copy()
    return search(self._rows, None)

  def _check(self, a: int, x_BxC: np.ndarray) -> None:
    """Rows [a, a+B) as scan_rows checks them; raises _NotUnitNorm for a row to re-normalise."""
    sq = np.einsum("ij,ij->i", x_BxC, x_BxC)  # float32: NaN, inf, 0 and overflow fall outside
    lo, hi = self._band
    odd = np.flatnonzero(~((sq >= lo) & (sq <= hi)))
    if not odd.size:
      return
    sub = np.asarray(x_BxC[odd])
    norms = row_norms(sub)  # NaN where not finite
    bad = ~np.isfinite(sub).all(axis=1) | (norms == 0)
    if bad.any():
      # scan_rows's error for the block of rows it would stop at: its first NaN/inf row, else
      # its first all-zero one (every row before that block is checked and fine).
      n, c = self.shape
      step = descriptors.block_rows(c)
      r = a + int(odd[np.argmax(bad)])
      s0 = r // step * step
      err = _checked_norms(np.asarray(self._mm[s0:s0 + step]), s0, n, self.path, self.field)[1]
      raise err or fail(self.path, self.field, "finite, non-zero descriptors",
                        f"row {r} (of {n}) changing as it was read")
    if (np.abs(norms - 1) > NORM_TOL).any():
      raise _NotUnitNorm()

  def _copy(self) -> np.ndarray:
    log.info("%s: %s: found (n, C) = %s; rows are not unit-norm: reading a re-normalised copy "
             "into memory", self.path, self.field, self.shape)
    self._mm = None  # its address space counts against the memory left for the copy
    return _renormalised(self.path, self._offset, self.shape, self.field)
