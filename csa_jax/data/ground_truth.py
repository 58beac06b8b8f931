"""Ground truth of the revisited test sets, and a test set's descriptors checked against it.

A gnd file (docs/method.md sections 6 and 7) holds one dict per query with 'easy', 'hard' and
'junk' database indices (and a 'bbx'), optionally with the database and query image names
('imlist', 'qimlist'). A test set is its gnd plus the query and database descriptors; their
counts, sizes and indices are cross-checked before anything is evaluated.
"""

from __future__ import annotations

import os

import numpy as np

from csa_jax.data.descriptors import as_descriptors
from csa_jax.data.index_lists import as_indices, as_names
from csa_jax.errors import fail
from csa_jax.formats.containers import describe, load_container, pick


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
  """Ground truth of a revisited test set, from gnd_<ds>.pkl or the same as .json.

  A bare list of per-query dicts is accepted too. Indices are checked against ``n_db``, else the
  length of 'imlist' when present.

  Args:
    path: the file.
    n_db: the number of database images, when known.

  Returns:
    One dict per query with int64 'easy', 'hard', 'junk' (and float64 'bbx' when present).
  """
  path = os.fspath(path)
  return parse_gnd(load_container(path), path, n_db)


def gnd_names(obj, path: str) -> dict[str, list[str]]:
  """The validated 'imlist' / 'qimlist' of a gnd document (those present and not None).

  Args:
    obj: the gnd file's content.
    path: the file, for messages.

  Returns:
    {'imlist': names, 'qimlist': names}, either key absent when the file has none.
  """
  if not isinstance(obj, dict):
    return {}
  return {k: as_names(obj[k], path, k) for k in ("imlist", "qimlist") if obj.get(k) is not None}


def parse_gnd(obj, path: str, n_db: int | None = None) -> list[dict]:
  """``load_gnd`` on already loaded content.

  Args:
    obj: the gnd file's content (a dict with 'gnd', or the bare list of entries).
    path: the file, for messages.
    n_db: the number of database images, when known.

  Returns:
    As ``load_gnd``.
  """
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
  """Checks every index of an already loaded gnd against the database size.

  Args:
    gnd: as ``load_gnd`` returns it.
    source: the gnd file, for messages.
    n_db: the number of database descriptors.
  """
  for q, e in enumerate(gnd):
    for k in ("easy", "hard", "junk"):
      as_indices(e[k], source, f"gnd[{q}].{k}", n_db)


def load_test_set(features_path, gnd_path, query_key: str = "query", db_key: str = "db"):
  """One test set whose features file holds both the 'db' and the 'query' descriptors.

  Counts are cross-checked: one query descriptor per gnd entry, as many db descriptors as the
  gnd's 'imlist' names (when it has one), gnd indices inside the db, one C for both.

  Args:
    features_path: the .npz / pickle with both descriptor sets.
    gnd_path: the gnd file.
    query_key: the query descriptors' entry.
    db_key: the database descriptors' entry.

  Returns:
    (query_QxC, db_NxC, gnd): float32 unit descriptors and ``load_gnd``'s list.
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

  Args:
    db_path: a bare array (or a one-entry dict) of database descriptors.
    query_path: likewise for the queries.
    gnd_path: the gnd file.

  Returns:
    (query_QxC, db_NxC, gnd), with the same cross-checks as ``load_test_set``.
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
  """(query, db, gnd) once the counts, sizes and indices agree; db, query: (array, file, field)."""
  db = as_descriptors(*db, n=n_db)
  query = as_descriptors(*query, n=len(gnd), dim=db.shape[1])
  if n_db is None:  # else parse_gnd checked the indices against the imlist
    check_gnd_range(gnd, gnd_path, len(db))
  return query, db, gnd
