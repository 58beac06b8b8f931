"""Readers and validation for the data layouts users already have (docs/method.md section 6).

Every reader accepts the original pickles (through ``safe_pickle``: data only, never code) and
the same content as ``.npy`` / ``.npz`` / ``.json``; the format is told by the file's first
bytes, not its name. Everything a reader returns has been checked: descriptors are finite,
float32, (n, C) and L2-normalised (checked as float32, after the cast and the normalisation: a
float64 value beyond the float32 range is refused, not turned into inf); index lists are integers
inside the database; name lists are lists of names. Any problem is an ``InputError`` whose one line
names the file, the field, what was expected and what was found (the row, for a bad descriptor).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from csa_jax.data import npyio
from csa_jax.errors import fail
from csa_jax.data.safe_pickle import load_data

NORM_TOL = 1e-3  # |norm - 1| above this re-normalises (with a warning)
_BLOCK_BYTES = 32 << 20  # float64 working set per block of rows: bounded whatever n is


def say(msg: str) -> None:
  """Notes for the user (orientation found, re-normalisation) go to stderr, never stdout."""
  print(f"csa-jax: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Containers: one reader for every format, told by content.


def file_format(path) -> str:
  """'npy', 'npz', 'pickle' or 'json', from the first bytes of ``path``."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError as e:
    raise fail(path, "file", "a readable file", e.strerror or type(e).__name__) from None
  if not head:
    raise fail(path, "file", "a .npy, .npz, pickle or JSON file", "an empty file (0 bytes)")
  if head.startswith(b"\x93NUMPY"):
    return "npy"
  if head.startswith(b"PK"):
    return "npz"
  if head[:1] == b"\x80" or path.endswith((".pkl", ".pickle")):
    return "pickle"
  if head.lstrip()[:1] in (b"{", b"["):
    return "json"
  raise fail(path, "file", "a .npy, .npz, pickle or JSON file", f"unknown content {head[:8]!r}")


def load_container(path, mmap: bool = False) -> Any:
  """The file's content: an ndarray (.npy, or memmap with ``mmap``), a dict of arrays (.npz),
  or the builtin containers of a pickle / JSON document."""
  path = os.fspath(path)
  fmt = file_format(path)
  if fmt == "pickle":
    return load_data(path)
  if fmt == "json":
    try:
      with open(path, encoding="utf-8") as f:
        return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
      raise fail(path, "file", "a complete JSON document", f"invalid JSON ({e})") from None
    except RecursionError:
      raise fail(path, "file", "a JSON document of reasonable nesting depth",
                 "nesting too deep to parse") from None
  if fmt == "npy":
    return npyio.load_npy(path, mmap=mmap)
  return npyio.load_npz(path)


def describe(obj) -> str:
  if isinstance(obj, np.ndarray):
    return f"an array of shape {obj.shape} ({obj.dtype})"
  if isinstance(obj, dict):
    return f"a dict with keys {sorted(map(str, obj))[:8]}"
  if isinstance(obj, (list, tuple)):
    return f"a {type(obj).__name__} of {len(obj)} items"
  name = type(obj).__name__
  return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def pick(obj, source: str, key: str | None, what: str):
  """``obj[key]`` for dict content, ``obj`` itself for a bare array; a clear error otherwise."""
  if isinstance(obj, dict):
    if key is None:
      if len(obj) == 1:
        return next(iter(obj.values()))
      raise fail(source, "key", f"a key naming the {what} (one of {sorted(map(str, obj))})",
                 "no key given")
    if key not in obj:
      raise fail(source, key, f"the {what} under key '{key}'",
                 f"no such key (keys: {sorted(map(str, obj))})")
    return obj[key]
  if not isinstance(obj, np.ndarray) and key is not None:
    raise fail(source, key, f"a dict holding '{key}'", describe(obj))
  return obj  # a bare array is the one split the file holds, whatever the key


# ----------------------------------------------------------------------------------------------
# Descriptors.


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

  Accepts (n, C) or (C, n): decided by the expected count ``n`` when given, else the expected size
  ``dim``, else which axis has unit norm, else the smaller axis is C; the choice goes to stderr.
  Finiteness is checked on the float32 array as used, so a float64 value beyond the float32 range
  is refused (naming its row) rather than becoming inf. Norms are taken in float64, so a finite
  float32 row whose norm exceeds the float32 range (values near 3e38) is still a direction and
  normalises correctly.
  """
  arr = _float_matrix(arr, source, field)
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
  row_norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
  col_norms = np.sqrt(np.einsum("ij,ij->j", x, x, dtype=np.float64))
  rows_unit = bool(np.all(np.abs(row_norms - 1) <= NORM_TOL))
  cols_unit = bool(np.all(np.abs(col_norms - 1) <= NORM_TOL))
  transpose, why = _orientation(x.shape, rows_unit, cols_unit, n, dim)
  if transpose:
    x, row_norms, rows_unit = np.ascontiguousarray(x.T), col_norms, cols_unit
  if n is not None and x.shape[0] != n:
    raise fail(source, field, f"{n} descriptors (one per annotated image) on either axis",
               f"shape {arr.shape}")
  if dim is not None and x.shape[1] != dim:
    raise fail(source, field, f"descriptor size C={dim} (as the other descriptors)",
               f"C={x.shape[1]} (shape {arr.shape})")
  if not rows_unit:
    zero = row_norms == 0  # any other norm is a direction (float64: no underflow)
    if zero.any():
      raise fail(source, field, "non-zero descriptors",
                 f"{int(zero.sum())} all-zero rows (first: row {int(np.argmax(zero))})")
  say(f"{source}: {field}: found {'(C, n)' if transpose else '(n, C)'} = {arr.shape} "
      f"(decided by {why}); using n={x.shape[0]}, C={x.shape[1]}")
  if not rows_unit:
    say(f"warning: {source}: {field}: descriptors are not L2-normalised (norms "
        f"{row_norms.min():.4g}..{row_norms.max():.4g}); re-normalising")
    x = _normalised(x, row_norms, source, field)  # never in place: x may be the caller's
  return x


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


def _row_blocks(n: int, c: int):
  """[a, b) ranges of rows whose float64 copies stay within ``_BLOCK_BYTES``."""
  step = max(1, _BLOCK_BYTES // (8 * max(c, 1)))
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


def _normalised(x: np.ndarray, norms: np.ndarray, source: str, field: str) -> np.ndarray:
  """x / norms in float64 (no overflow for values near the float32 maximum), as float32."""
  out = np.empty(x.shape, np.float32)
  for a, b in _row_blocks(*x.shape):
    out[a:b] = x[a:b] / norms[a:b, None]
    ok = np.isfinite(out[a:b]).all(axis=1)
    if not ok.all():  # cannot happen for finite rows of non-zero norm; never pass one on
      raise fail(source, field, "finite values after L2 normalisation",
                 f"NaN/inf in row {a + int(np.argmin(ok))}")
  return out


def load_descriptors(path, key: str | None = None, *, n: int | None = None,
                     dim: int | None = None) -> np.ndarray:
  """float32 (n, C) descriptors from .npy, .npz[key] or a pickle[key] (docs/method.md section 6).

  key: the dict entry ('train', 'val', 'db', 'query'); None for a bare array or a one-entry file.
  n / dim: expected count / size when known (decides the orientation and is checked).
  """
  path = os.fspath(path)
  obj = load_container(path)
  return as_descriptors(pick(obj, path, key, "descriptors"), path, key or "descriptors", n, dim)


def load_r1m(path, dim: int | None = None):
  """R1M distractors (n, C), every row checked.

  A native float32 (n, C) .npy is memory-mapped, never read whole into RAM: it is scanned a block
  of rows at a time through one reused buffer (finite and unit-norm rows), then returned as a
  read-only memmap. Anything else (a pickle, (C, n), float64, rows to re-normalise) is read and
  validated in RAM like any descriptors.

  Args:
    path: the file.
    dim: the test set's descriptor size C, which the distractors must share.
  """
  path = os.fspath(path)
  if file_format(path) == "npy":
    mm = load_container(path, mmap=True)
    if mm.ndim == 2 and dim is not None and dim not in mm.shape:  # from the header alone
      raise fail(path, "r1m", f"descriptor size C={dim} (as the test set's descriptors)",
                 f"shape {mm.shape}")
    if (isinstance(mm, np.memmap) and mm.dtype == np.dtype(np.float32) and mm.ndim == 2
        and mm.shape[0] > mm.shape[1] > 0 and mm.flags.c_contiguous
        and (dim is None or mm.shape[1] == dim)):
      if scan_rows(path, int(mm.offset), mm.shape, "r1m"):
        say(f"{path}: r1m: found (n, C) = {mm.shape}; memory-mapped, every row checked")
        return mm
      say(f"{path}: r1m: rows are not unit-norm; reading the whole file to re-normalise")
    else:
      say(f"{path}: r1m: not a float32 (n, C) array (shape {mm.shape}, {mm.dtype}); reading it "
          "into memory (convert it to a float32 (n, C) .npy to memory-map it)")
    del mm
  obj = load_container(path)
  return as_descriptors(pick(obj, path, None, "descriptors"), path, "r1m", dim=dim)


def scan_rows(path: str, offset: int, shape: tuple[int, int], field: str,
              block_rows: int | None = None) -> bool:
  """Checks every row of a native float32 C-order (n, C) array stored at ``offset`` in ``path``.

  Reads ``block_rows`` rows at a time (default: about ``_BLOCK_BYTES``) into one buffer, so memory
  stays bounded whatever the file's size, and the page cache, not the process, holds what a later
  memory map needs.

  Returns:
    Whether every row has unit L2 norm (within ``NORM_TOL``).

  Raises:
    InputError: naming the first row holding a NaN or inf.
  """
  n, c = shape
  step = block_rows or max(1, _BLOCK_BYTES // (8 * c))
  buf = np.empty((min(step, n), c), np.float32)
  unit = True
  with open(path, "rb") as f:
    f.seek(offset)
    for a in range(0, n, step):
      blk = buf[:min(step, n - a)]
      view, got = memoryview(blk).cast("B"), 0
      while got < len(view):
        k = f.readinto(view[got:])
        if not k:
          break
        got += k
      if got != len(view):  # the file shrank since its header was checked
        raise fail(path, field, f"{n} rows of {c} float32", f"the file ends at row {a}")
      ok = np.isfinite(blk).all(axis=1)
      if not ok.all():
        raise fail(path, field, "finite values",
                   f"NaN/inf in row {a + int(np.argmin(ok))} (of {n})")
      if unit:
        norms = np.sqrt(np.einsum("ij,ij->i", blk, blk, dtype=np.float64))
        unit = bool(np.all(np.abs(norms - 1) <= NORM_TOL))
  return unit


# ----------------------------------------------------------------------------------------------
# Index lists: gnd files and annotations.


def as_indices(v, source: str, field: str, n: int | None = None) -> np.ndarray:
  """A 1-D int64 array of 0-based indices, inside [0, n) when n is known."""
  if isinstance(v, (str, bytes, dict)):
    raise fail(source, field, "a flat list of integer indices", describe(v))
  try:
    a = np.asarray(v)
  except (ValueError, TypeError, RecursionError):
    raise fail(source, field, "a flat list of integer indices", describe(v)) from None
  if a.size == 0:
    return np.zeros((0,), np.int64)
  if a.ndim != 1:
    raise fail(source, field, "a flat list of integer indices", f"shape {a.shape}")
  if (a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a))
      and np.all(np.abs(a) < 2.0**62)):
    a = a.astype(np.int64)  # JSON / MATLAB-converted lists sometimes store 3.0
  if a.dtype.kind not in "iu":
    first = a.ravel()[:1].tolist()[0]
    raise fail(source, field, "integer indices", f"dtype {a.dtype} (e.g. {first!r:.40})")
  if a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max:
    raise fail(source, field, "indices that fit int64", f"{int(a.max())}")
  a = a.astype(np.int64)
  if n is not None and (a.min() < 0 or a.max() >= n):
    bad = a[(a < 0) | (a >= n)]
    raise fail(source, field, f"indices in [0, {n})",
               f"{bad.size} out of range (e.g. {int(bad[0])})")
  if n is None and a.min() < 0:
    raise fail(source, field, "non-negative indices", f"{int(a.min())}")
  return a


def as_names(v, source: str, field: str) -> list[str]:
  """A flat list of image names or ids ('imlist', 'qimlist', 'cids') as strings."""
  if isinstance(v, np.ndarray):
    if v.ndim != 1 or v.dtype.kind not in "USiuO":  # object arrays: each name checked below
      raise fail(source, field, "a flat list of names", describe(v))
    v = v.tolist()
  if not isinstance(v, (list, tuple)):
    raise fail(source, field, "a list of names", describe(v))
  out = []
  for i, s in enumerate(v):
    if isinstance(s, bytes):
      s = s.decode("utf-8", "replace")
    elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
      s = str(int(s))  # numeric ids (cids) are names too
    elif not isinstance(s, str):
      raise fail(source, f"{field}[{i}]", "a name (text)", describe(s))
    out.append(str(s))
  return out


def _as_bbx(v, source: str, field: str) -> np.ndarray:
  """A query's bounding box: 4 finite numbers [x1, y1, x2, y2], float64."""
  want = "a bounding box of 4 finite numbers [x1, y1, x2, y2]"
  if isinstance(v, (str, bytes, dict)):
    raise fail(source, field, want, describe(v))
  try:
    a = np.asarray(v)
  except (ValueError, TypeError, RecursionError):
    raise fail(source, field, want, f"{describe(v)} that is not a flat list of numbers") \
        from None
  if a.dtype.kind not in "iuf" or a.size != 4:
    raise fail(source, field, want, f"shape {a.shape} of dtype {a.dtype}")
  a = a.astype(np.float64).reshape(4)
  if not np.all(np.isfinite(a)):
    raise fail(source, field, want, f"{a.tolist()}")
  return a


def load_gnd(path, n_db: int | None = None) -> list[dict]:
  """Ground truth of a revisited test set: one dict per query with int64 'easy', 'hard', 'junk'
  (and 'bbx' when present). From gnd_<ds>.pkl or the same as .json; a bare list of per-query dicts
  is accepted too. Indices are checked against ``n_db``, else the length of 'imlist' when present.
  """
  path = os.fspath(path)
  return parse_gnd(load_container(path), path, n_db)


def gnd_names(obj, path: str) -> dict[str, list[str]]:
  """The validated 'imlist' / 'qimlist' of a gnd document (those present and not None)."""
  if not isinstance(obj, dict):
    return {}
  return {k: as_names(obj[k], path, k) for k in ("imlist", "qimlist") if obj.get(k) is not None}


def parse_gnd(obj, path: str, n_db: int | None = None) -> list[dict]:
  """``load_gnd`` on already loaded content."""
  if isinstance(obj, dict):
    if "gnd" not in obj:
      raise fail(path, "gnd", "a dict with key 'gnd' (per-query ground truth)", describe(obj))
    entries = obj["gnd"]
    names = gnd_names(obj, path)
    if "imlist" in names:
      imlist = names["imlist"]
      if n_db is not None and len(imlist) != n_db:
        raise fail(path, "imlist", f"{n_db} database images", f"{len(imlist)} names")
      n_db = len(imlist) if n_db is None else n_db
    if "qimlist" in names and isinstance(entries, (list, tuple)) \
        and len(names["qimlist"]) != len(entries):
      raise fail(path, "qimlist", f"one name per gnd entry ({len(entries)})",
                 f"{len(names['qimlist'])} names")
  else:
    entries = obj
  if not isinstance(entries, (list, tuple)):
    raise fail(path, "gnd", "a list of per-query dicts", describe(entries))
  if not entries:
    raise fail(path, "gnd", "at least one query", "an empty list")
  gnd = []
  for q, e in enumerate(entries):
    if not isinstance(e, dict):
      raise fail(path, f"gnd[{q}]", "a dict with 'easy', 'hard', 'junk'", describe(e))
    out = {}
    for k in ("easy", "hard", "junk"):
      if k not in e:
        raise fail(path, f"gnd[{q}].{k}", f"a list of db indices under '{k}'",
                   f"no such key (keys: {sorted(map(str, e))[:8]})")
      out[k] = as_indices(e[k], path, f"gnd[{q}].{k}", n_db)
    if "bbx" in e and e["bbx"] is not None:
      out["bbx"] = _as_bbx(e["bbx"], path, f"gnd[{q}].bbx")
    gnd.append(out)
  return gnd


def check_gnd_range(gnd: list[dict], source: str, n_db: int) -> None:
  """Checks every index of an already loaded gnd against the database size."""
  for q, e in enumerate(gnd):
    for k in ("easy", "hard", "junk"):
      as_indices(e[k], source, f"gnd[{q}].{k}", n_db)


def load_test_set(features_path, gnd_path, query_key: str = "query", db_key: str = "db"):
  """(query_QxC, db_NxC, gnd) of one test set; the features file holds 'db' and 'query'.

  Counts are cross-checked (see ``_cross_checked``).
  """
  features_path = os.fspath(features_path)
  gnd_path = os.fspath(gnd_path)
  gnd, n_db = _test_gnd(gnd_path)
  obj = load_container(features_path)
  if not isinstance(obj, dict):
    raise fail(features_path, "file", "a dict with 'db' and 'query' descriptors", describe(obj))
  db = (pick(obj, features_path, db_key, "database descriptors"), features_path, db_key)
  query = (pick(obj, features_path, query_key, "query descriptors"), features_path, query_key)
  return _cross_checked(gnd, gnd_path, n_db, db, query)


def load_test_files(db_path, query_path, gnd_path):
  """``load_test_set`` for a test set whose db and query descriptors are two files.

  Each file holds a bare array (or a one-entry dict); the same cross-checks apply.
  """
  db_path, query_path, gnd_path = map(os.fspath, (db_path, query_path, gnd_path))
  gnd, n_db = _test_gnd(gnd_path)
  db = (pick(load_container(db_path), db_path, None, "database descriptors"), db_path, "db")
  query = (pick(load_container(query_path), query_path, None, "query descriptors"), query_path,
           "query")
  return _cross_checked(gnd, gnd_path, n_db, db, query)


def _test_gnd(gnd_path: str) -> tuple[list[dict], int | None]:
  """The gnd and, when it names its database images, their count."""
  obj = load_container(gnd_path)
  gnd = parse_gnd(obj, gnd_path)
  names = gnd_names(obj, gnd_path)
  return gnd, len(names["imlist"]) if "imlist" in names else None


def _cross_checked(gnd, gnd_path: str, n_db: int | None, db, query):
  """(query, db, gnd) once one query descriptor per gnd entry, as many db descriptors as the
  gnd's 'imlist' names (when it has one), gnd indices inside the db and one C for both hold.

  db, query: (array, file, field) as found.
  """
  db = as_descriptors(*db, n=n_db)
  query = as_descriptors(*query, n=len(gnd), dim=db.shape[1])
  if n_db is None:  # else parse_gnd checked the indices against the imlist
    check_gnd_range(gnd, gnd_path, len(db))
  return query, db, gnd


def _as_clusters(v, source: str, field: str) -> np.ndarray:
  a = as_indices(v, source, field)
  if a.size == 0:
    raise fail(source, field, "one cluster id per image", "an empty list")
  if a.max() > np.iinfo(np.int32).max:
    raise fail(source, field, "cluster ids that fit int32", f"max {int(a.max())}")
  return a.astype(np.int32)


def load_annotations(path) -> dict:
  """rSfM120k annotations (retrieval-SfM-120k.pkl or .json).

  Returns {split: {'cluster': int32 (n,), 'cids': list | None, 'qidxs': int64, 'pidxs': int64}}
  for the splits present ('train' required, 'val' optional). cluster is what training needs;
  cids, qidxs and pidxs are checked when present (lengths, indices inside the split).
  """
  path = os.fspath(path)
  obj = load_container(path)
  if not isinstance(obj, dict) or "train" not in obj:
    raise fail(path, "train", "a dict with a 'train' split (and optionally 'val')",
               describe(obj))
  out = {}
  for split in ("train", "val"):
    if split not in obj:
      continue
    s = obj[split]
    if not isinstance(s, dict):
      raise fail(path, split, "a dict with 'cluster' (and 'cids', 'qidxs', 'pidxs')",
                 describe(s))
    if "cluster" not in s:
      raise fail(path, f"{split}.cluster", "one cluster id per image",
                 f"no such key (keys: {sorted(map(str, s))})")
    cluster = _as_clusters(s["cluster"], path, f"{split}.cluster")
    n = len(cluster)
    cids = s.get("cids")
    if cids is not None:
      cids = as_names(cids, path, f"{split}.cids")
      if len(cids) != n:
        raise fail(path, f"{split}.cids", f"{n} image ids (one per cluster label)",
                   f"{len(cids)}")
    pair = {k: as_indices(s[k], path, f"{split}.{k}", n) for k in ("qidxs", "pidxs") if k in s}
    if len(pair) == 2 and len(pair["qidxs"]) != len(pair["pidxs"]):
      raise fail(path, f"{split}.pidxs", f"one positive per query ({len(pair['qidxs'])})",
                 f"{len(pair['pidxs'])}")
    out[split] = {"cluster": cluster, "cids": cids, "qidxs": pair.get("qidxs"),
                  "pidxs": pair.get("pidxs")}
  return out
