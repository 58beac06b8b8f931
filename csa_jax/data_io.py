"""Readers and validation for the data layouts users already have (SPEC section 6).

Every reader accepts the original pickles (through ``safe_pickle``: data only, never code) and
the same content as ``.npy`` / ``.npz`` / ``.json``; the format is told by the file's first
bytes, not its name. Everything a reader returns has been checked: descriptors are finite,
float32, (n, C) and L2-normalised; index lists are integers inside the database. Any problem is an
``InputError`` whose one line names the file, the field, what was expected and what was found.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from typing import Any

import numpy as np

from csa_jax.errors import fail
from csa_jax.safe_pickle import load_data

NORM_TOL = 1e-3  # |norm - 1| above this re-normalises (with a warning)
_R1M_SAMPLE = 4096  # rows per probe when a memory-mapped file is only spot-checked


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
      with open(path) as f:
        return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
      raise fail(path, "file", "a complete JSON document", f"invalid JSON ({e})") from None
  try:
    if fmt == "npy":
      return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise fail(path, "dtype", "numeric arrays", "an object array (pickled Python objects)") \
          from None
    raise fail(path, "file", f"a complete .{fmt} file", f"unreadable ({e})") from None
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise fail(path, "file", f"a complete .{fmt} file", f"unreadable ({type(e).__name__}: {e})") \
        from None


def describe(obj) -> str:
  if isinstance(obj, np.ndarray):
    return f"an array of shape {obj.shape} ({obj.dtype})"
  if isinstance(obj, dict):
    return f"a dict with keys {sorted(map(str, obj))[:8]}"
  if isinstance(obj, (list, tuple)):
    return f"a {type(obj).__name__} of {len(obj)} items"
  return f"a {type(obj).__name__}"


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
  """
  if not isinstance(arr, np.ndarray):
    try:
      arr = np.asarray(arr)
    except ValueError:
      raise fail(source, field, "a 2-D array of descriptors", describe(arr)) from None
  if arr.dtype.kind != "f":
    raise fail(source, field, "floating-point descriptors (float16/32/64)",
               f"dtype {arr.dtype}")
  if arr.ndim != 2:
    raise fail(source, field, "a 2-D (n, C) or (C, n) array", f"shape {arr.shape}")
  if arr.size == 0:
    raise fail(source, field, "a non-empty array", f"shape {arr.shape}")
  bad = ~np.isfinite(arr)
  if bad.any():
    i, j = np.argwhere(bad)[0]
    raise fail(source, field, "finite values",
               f"{int(bad.sum())} NaN/inf (first at stored position [{i}, {j}])")
  x = arr.astype(np.float32, copy=False)  # R1M is 8 GB: no copy unless needed
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
    zero = row_norms < 1e-12
    if zero.any():
      raise fail(source, field, "non-zero descriptors",
                 f"{int(zero.sum())} all-zero rows (first: row {int(np.argmax(zero))})")
  say(f"{source}: {field}: found {'(C, n)' if transpose else '(n, C)'} = {arr.shape} "
      f"(decided by {why}); using n={x.shape[0]}, C={x.shape[1]}")
  if not rows_unit:
    say(f"warning: {source}: {field}: descriptors are not L2-normalised (norms "
        f"{row_norms.min():.4g}..{row_norms.max():.4g}); re-normalising")
    x = x / row_norms[:, None].astype(np.float32)  # never in place: x may be the caller's
  return x


def load_descriptors(path, key: str | None = None, *, n: int | None = None,
                     dim: int | None = None) -> np.ndarray:
  """float32 (n, C) descriptors from .npy, .npz[key] or a pickle[key] (SPEC section 6).

  key: the dict entry ('train', 'val', 'db', 'query'); None for a bare array or a one-entry file.
  n / dim: expected count / size when known (decides the orientation and is checked).
  """
  path = os.fspath(path)
  obj = load_container(path)
  return as_descriptors(pick(obj, path, key, "descriptors"), path, key or "descriptors", n, dim)


def load_r1m(path, dim: int | None = None):
  """R1M distractors (n, C). A float32 (n, C) .npy is memory-mapped (never read whole into RAM) and
  spot-checked on a few thousand rows; anything else is read and fully validated in RAM."""
  path = os.fspath(path)
  if file_format(path) == "npy":
    mm = load_container(path, mmap=True)
    if (mm.dtype == np.float32 and mm.ndim == 2 and mm.shape[0] > mm.shape[1] > 0
        and mm.flags.c_contiguous and (dim is None or mm.shape[1] == dim)):
      rng = np.random.default_rng(0)
      rows = np.unique(np.concatenate([
          np.arange(min(_R1M_SAMPLE, len(mm))), np.arange(max(0, len(mm) - _R1M_SAMPLE), len(mm)),
          rng.integers(0, len(mm), _R1M_SAMPLE)]))
      sample = np.asarray(mm[rows])
      if not np.isfinite(sample).all():
        raise fail(path, "r1m", "finite values", "NaN/inf in the checked rows")
      norms = np.linalg.norm(sample, axis=1)
      if np.all(np.abs(norms - 1) <= NORM_TOL):
        say(f"{path}: r1m: found (n, C) = {mm.shape}; memory-mapped, {len(rows)} rows checked")
        return mm
      say(f"{path}: r1m: sampled rows are not unit-norm; reading the whole file to re-normalise")
    else:
      say(f"{path}: r1m: not a float32 (n, C) array (shape {mm.shape}, {mm.dtype}); reading it "
          "into memory (convert it to a float32 (n, C) .npy to memory-map it)")
    del mm
  return load_descriptors(path, dim=dim)


# ----------------------------------------------------------------------------------------------
# Index lists: gnd files and annotations.


def as_indices(v, source: str, field: str, n: int | None = None) -> np.ndarray:
  """A 1-D int64 array of 0-based indices, inside [0, n) when n is known."""
  try:
    a = np.asarray(v)
  except ValueError:
    raise fail(source, field, "a flat list of integer indices", describe(v)) from None
  if a.size == 0:
    return np.zeros((0,), np.int64)
  if a.ndim != 1:
    raise fail(source, field, "a flat list of integer indices", f"shape {a.shape}")
  if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
    a = a.astype(np.int64)  # JSON / MATLAB-converted lists sometimes store 3.0
  if a.dtype.kind not in "iu":
    first = a.ravel()[:1].tolist()[0]
    raise fail(source, field, "integer indices", f"dtype {a.dtype} (e.g. {first!r})")
  a = a.astype(np.int64)
  if n is not None and (a.min() < 0 or a.max() >= n):
    bad = a[(a < 0) | (a >= n)]
    raise fail(source, field, f"indices in [0, {n})",
               f"{bad.size} out of range (e.g. {int(bad[0])})")
  if n is None and a.min() < 0:
    raise fail(source, field, "non-negative indices", f"{int(a.min())}")
  return a


def load_gnd(path, n_db: int | None = None) -> list[dict]:
  """Ground truth of a revisited test set: one dict per query with int64 'easy', 'hard', 'junk'
  (and 'bbx' when present). From gnd_<ds>.pkl or the same as .json; a bare list of per-query dicts
  is accepted too. Indices are checked against ``n_db``, else the length of 'imlist' when present.
  """
  path = os.fspath(path)
  return parse_gnd(load_container(path), path, n_db)


def parse_gnd(obj, path: str, n_db: int | None = None) -> list[dict]:
  """``load_gnd`` on already loaded content."""
  if isinstance(obj, dict):
    if "gnd" not in obj:
      raise fail(path, "gnd", "a dict with key 'gnd' (per-query ground truth)", describe(obj))
    imlist, entries = obj.get("imlist"), obj["gnd"]
    if imlist is not None:
      if n_db is not None and len(imlist) != n_db:
        raise fail(path, "imlist", f"{n_db} database images", f"{len(imlist)} names")
      n_db = len(imlist) if n_db is None else n_db
    qimlist = obj.get("qimlist")
    if qimlist is not None and isinstance(entries, (list, tuple)) and len(qimlist) != len(entries):
      raise fail(path, "qimlist", f"one name per gnd entry ({len(entries)})",
                 f"{len(qimlist)} names")
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
                   f"no such key (keys: {sorted(map(str, e))})")
      out[k] = as_indices(e[k], path, f"gnd[{q}].{k}", n_db)
    if "bbx" in e and e["bbx"] is not None:
      out["bbx"] = np.asarray(e["bbx"], np.float64)
    gnd.append(out)
  return gnd


def check_gnd_range(gnd: list[dict], source: str, n_db: int) -> None:
  """Checks every index of an already loaded gnd against the database size."""
  for q, e in enumerate(gnd):
    for k in ("easy", "hard", "junk"):
      as_indices(e[k], source, f"gnd[{q}].{k}", n_db)


def load_test_set(features_path, gnd_path, query_key: str = "query", db_key: str = "db"):
  """(query_QxC, db_NxC, gnd) of one test set; the features file holds 'db' and 'query'.

  Counts are cross-checked: one query descriptor per gnd entry, gnd indices inside the db, the
  same C for both, and as many db descriptors as the gnd's 'imlist' names when it has one.
  """
  features_path, gnd_path = os.fspath(features_path), os.fspath(gnd_path)
  gnd_obj = load_container(gnd_path)
  gnd = parse_gnd(gnd_obj, gnd_path)
  gnd_obj_n = _imlist_len(gnd_obj)
  obj = load_container(features_path)
  if not isinstance(obj, dict):
    raise fail(features_path, "file", "a dict with 'db' and 'query' descriptors", describe(obj))
  db = as_descriptors(pick(obj, features_path, db_key, "database descriptors"), features_path,
                      db_key, n=gnd_obj_n)
  query = as_descriptors(pick(obj, features_path, query_key, "query descriptors"), features_path,
                         query_key, n=len(gnd), dim=db.shape[1])
  if gnd_obj_n is None:
    check_gnd_range(gnd, gnd_path, len(db))
  return query, db, gnd


def _imlist_len(obj) -> int | None:
  # When the gnd names its database images, the db orientation can use their count.
  if isinstance(obj, dict) and isinstance(obj.get("imlist"), (list, tuple, np.ndarray)):
    return len(obj["imlist"])
  return None


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
      if len(cids) != n:
        raise fail(path, f"{split}.cids", f"{n} image ids (one per cluster label)",
                   f"{len(cids)}")
      cids = [str(c) for c in cids]
    pair = {k: as_indices(s[k], path, f"{split}.{k}", n) for k in ("qidxs", "pidxs") if k in s}
    if len(pair) == 2 and len(pair["qidxs"]) != len(pair["pidxs"]):
      raise fail(path, f"{split}.pidxs", f"one positive per query ({len(pair['qidxs'])})",
                 f"{len(pair['pidxs'])}")
    out[split] = {"cluster": cluster, "cids": cids, "qidxs": pair.get("qidxs"),
                  "pidxs": pair.get("pidxs")}
  return out
