"""Descriptor matrices from users' files, checked row by row (docs/method.md section 6).

Everything returned is finite, float32, (n, C) and L2-normalised. Finiteness is checked as
float32, after the cast: a float64 value beyond the float32 range is refused (naming its row),
not turned into inf. Norms are taken in float64, so a finite float32 row whose norm overflows
float32 (values near 3e38) is still a direction. Large matrices are scanned and re-normalised a
block of rows at a time (``BLOCK_BYTES`` of float64), so working memory is bounded whatever n is.
Files too large to read whole (R1M, a user's database) go through ``data.large_descriptors``,
with the same rules.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from csa_jax.core.normalize import NORM_TOL, l2_normalize, row_norms
from csa_jax.errors import fail
from csa_jax.formats.containers import describe, load_container, pick

log = logging.getLogger(__name__)

BLOCK_BYTES = 32 << 20  # float64 working set per block of rows: bounded whatever n is
# Zero rows are refused before normalising; the smallest float64 keeps a subnormal float32 row's
# norm (>= 1.4e-45) as the divisor where l2_normalize's default 1e-12 floor would not.
NORM_FLOOR = float(np.finfo(np.float64).tiny)


def _orientation(shape, rows_unit: bool, cols_unit: bool, n, dim) -> tuple[bool, str]:
  """(transpose?, why) for a stored 2-D array: known count, known size, unit norms, smaller axis."""
  a, b = shape
  for want, axis_name in ((n, "count"), (dim, "size")):
    if want is None:
      continue
    if (a == want) != (b == want):
      # n matches axis 0 -> (n, C) stored; dim matches axis 0 -> (C, n) stored.
      return (b == want) if axis_name == "count" else (a == want), f"the expected {axis_name}"
  if rows_unit != cols_unit:
    return cols_unit, "which axis has unit norm"
  return a < b, "the smaller axis is C"


def as_descriptors(arr, source: str, field: str, n: int | None = None,
                   dim: int | None = None) -> np.ndarray:
  """Validates one descriptor array and returns it float32 (n, C), rows L2-normalised.

  The orientation ((n, C) or (C, n) stored) is decided by the expected count ``n`` when given,
  else the expected size ``dim``, else which axis has unit norm, else the smaller axis is C; the
  choice is logged.

  Args:
    arr: the array as read (any float dtype, either orientation), or a nested list.
    source: the file, for messages.
    field: the entry in it ('db', 'train', ...), for messages.
    n: the expected number of descriptors, when known (checked).
    dim: the expected descriptor size C, when known (checked).

  Returns:
    feats_NxC: float32, finite, unit rows; ``arr`` itself when it already is all that.
  """
  arr = _float_matrix(arr, source, field)
  if dim is not None and dim not in arr.shape:  # no orientation can give C=dim: say so
    raise width_error(source, field, arr.shape, dim, n)
  with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values: reported below
    x = arr.astype(np.float32, copy=False)  # R1M is 8 GB: no copy unless needed
  bad_rows, bad_cols, n_bad = _nonfinite(x)
  if n_bad:
    transpose, _ = _orientation(x.shape, False, False, n, dim)
    bad = bad_cols if transpose else bad_rows
    r = int(np.argmax(bad))
    stored = arr[:, r] if transpose else arr[r]
    rows = int(bad.sum())
    raise fail(source, field, "finite values (as float32)",
               f"{n_bad} NaN/inf values in {rows} row{'s' * (rows != 1)} (first: row {r}: "
               f"{_nonfinite_kind(stored)})")
  norms_r = row_norms(x)
  col_norms = np.sqrt(np.einsum("ij,ij->j", x, x, dtype=np.float64))
  rows_unit = bool(np.all(np.abs(norms_r - 1) <= NORM_TOL))
  cols_unit = bool(np.all(np.abs(col_norms - 1) <= NORM_TOL))
  transpose, why = _orientation(x.shape, rows_unit, cols_unit, n, dim)
  if transpose:
    x, norms_r, rows_unit = np.ascontiguousarray(x.T), col_norms, cols_unit
  if n is not None and x.shape[0] != n:
    raise fail(source, field, f"{n} descriptors (one per annotated image) on either axis",
               f"shape {arr.shape}")
  if dim is not None and x.shape[1] != dim:  # the count took the axis of size dim (n == dim)
    raise width_error(source, field, arr.shape, dim, n)
  if not rows_unit:
    zero = norms_r == 0  # any other norm is a direction (float64: no underflow)
    if zero.any():
      raise fail(source, field, "non-zero descriptors",
                 f"{int(zero.sum())} all-zero rows (first: row {int(np.argmax(zero))})")
  # Stored transposed is worth a line; the usual (n, C) only with --verbose (every file read).
  log.log(logging.INFO if transpose else logging.DEBUG,
          "%s: %s: found %s = %s (decided by %s); using n=%d, C=%d", source, field,
          "(C, n)" if transpose else "(n, C)", arr.shape, why, x.shape[0], x.shape[1])
  if not rows_unit:
    log.warning("%s: %s: descriptors are not L2-normalised (norms %.4g..%.4g); re-normalising",
                source, field, norms_r.min(), norms_r.max())
    x = _normalised(x, source, field)  # never in place: x may be the caller's
  return x


def width_error(source: str, field: str, shape, dim: int, n: int | None):
  """The one message for descriptors of the wrong size C, whatever the stored orientation."""
  count = str(n) if n is not None else ("Q" if field == "query" else "N")
  whose = "the database's" if field == "query" else "as the other descriptors"
  a, b = shape
  found = f"shape {tuple(shape)}"
  if n is not None and (a == n) != (b == n):  # the count tells which axis is C
    found = f"C={b if a == n else a} ({found})"
  return fail(source, field, f"descriptor size C={dim} ({whose}): ({count}, {dim}) or "
              f"({dim}, {count}) descriptors", found)


def _float_matrix(arr, source: str, field: str) -> np.ndarray:
  """``arr`` as a non-empty 2-D floating-point ndarray, else the error saying what it is."""
  if not isinstance(arr, np.ndarray):
    if not isinstance(arr, (list, tuple)):  # e.g. a dict where an array belongs
      raise fail(source, field, "a 2-D array of descriptors", describe(arr))
    try:
      arr = np.asarray(arr)
    except (ValueError, TypeError, RecursionError):
      raise fail(source, field, "a 2-D array of descriptors",
                 f"{describe(arr)} that is not a rectangular array of numbers") from None
  if arr.dtype.kind != "f":
    raise fail(source, field, "floating-point descriptors (float16/32/64)",
               f"dtype {arr.dtype}")
  if arr.ndim != 2:
    raise fail(source, field, "a 2-D (n, C) or (C, n) array", f"shape {arr.shape}")
  if arr.size == 0:
    raise fail(source, field, "a non-empty array", f"shape {arr.shape}")
  return arr


def block_rows(c: int) -> int:
  """Rows of C values whose float64 copies fill ``BLOCK_BYTES`` (at least one)."""
  return max(1, BLOCK_BYTES // (8 * max(c, 1)))


def _row_blocks(n: int, c: int):
  """[a, b) ranges of rows whose float64 copies stay within ``BLOCK_BYTES``."""
  step = block_rows(c)
  return ((a, min(n, a + step)) for a in range(0, n, step))


def _nonfinite(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
  """(rows with a NaN/inf, columns with one, how many values), a block of rows at a time."""
  bad_rows = np.zeros(x.shape[0], bool)
  bad_cols = np.zeros(x.shape[1], bool)
  count = 0
  for a, b in _row_blocks(*x.shape):
    bad = ~np.isfinite(x[a:b])
    if bad.any():
      bad_rows[a:b] = bad.any(axis=1)
      bad_cols |= bad.any(axis=0)
      count += int(bad.sum())
  return bad_rows, bad_cols, count


def _nonfinite_kind(stored_row: np.ndarray) -> str:
  """Why a row is not finite as float32: NaN, inf, or a stored value beyond the float32 range."""
  with np.errstate(over="ignore", invalid="ignore"):
    if np.isnan(stored_row).any():
      return "NaN"
    if np.isinf(stored_row).any():
      return "inf"
    big = float(np.max(np.abs(stored_row.astype(np.float64))))
  return f"{big:.3g} is beyond the float32 range +-3.4e38"


def _normalised(x: np.ndarray, source: str, field: str) -> np.ndarray:
  """x's rows L2-normalised into a new float32 array, a block of rows at a time."""
  out = np.empty(x.shape, np.float32)
  for a, b in _row_blocks(*x.shape):
    out[a:b] = l2_normalize(x[a:b], axis=1, eps=NORM_FLOOR)
    ok = np.isfinite(out[a:b]).all(axis=1)
    if not ok.all():  # cannot happen for finite rows of non-zero norm; never pass one on
      raise fail(source, field, "finite values after L2 normalisation",
                 f"NaN/inf in row {a + int(np.argmin(ok))}")
  return out


def load_descriptors(path, key: str | None = None, *, n: int | None = None,
                     dim: int | None = None) -> np.ndarray:
  """Descriptors from .npy, .npz[key] or a pickle[key] (docs/method.md section 6).

  Args:
    path: the file.
    key: the dict entry ('train', 'val', 'db', 'query'); None for a bare array or a one-entry
      file.
    n: the expected count, when known (decides the orientation and is checked).
    dim: the expected size C, when known (likewise).

  Returns:
    feats_NxC: float32, finite, unit rows (``as_descriptors``).
  """
  path = os.fspath(path)
  obj = load_container(path)
  return as_descriptors(pick(obj, path, key, "descriptors"), path, key or "descriptors", n, dim)
