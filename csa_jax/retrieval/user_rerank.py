"""A user's own queries and database, as ``csa-jax rerank`` reads them.

``load_database`` / ``load_queries`` / ``load_names`` (from ``data.index_lists``) read the user's
files with the checks of ``data.descriptors``; ``retrieval.rerank.search_and_rerank`` then
searches and re-ranks them. With a first round of the user's own (``--first-round``),
``map_database`` maps the database without reading it, and ``load_first_round`` reads and checks
the engine's ids (docs/first_round.md); ``rerank_shortlist`` re-ranks them. ``rerank`` is
``search_and_rerank``'s deprecated name.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

import numpy as np

from csa_jax.data import descriptors, large_descriptors
from csa_jax.data.index_lists import load_names  # noqa: F401  (public here too)
from csa_jax.errors import fail
from csa_jax.formats import containers, npyio
from csa_jax.formats.regular_file import read_regular
from csa_jax.retrieval import first_round, validate
from csa_jax.retrieval import rerank as rerank_lib

log = logging.getLogger(__name__)

def _entry(obj, path: str, key: str):
  """``obj[key]`` when a dict holds it (a test-set file with 'db' and 'query'), else its one
  entry or the bare array."""
  if isinstance(obj, dict) and key in obj:
    return obj[key]
  return containers.pick(obj, path, None, f"{key} descriptors")


def load_database(path) -> np.ndarray:
  """A user's database descriptors, (N, C) float32 with unit rows.

  A float32 C-order (N, C) ``.npy`` with N > C is memory-mapped (every row checked a block at a
  time; never read whole); anything else any reader accepts (.npy, .npz, pickle, JSON; a dict
  is read at its 'db' entry or its only one) is read and validated in RAM.

  Args:
    path: the file.

  Returns:
    db_NxC: a read-only memmap or an array (``descriptors.as_descriptors``).
  """
  return large_descriptors.load_large(path, field="db", key="db")


def map_database(path):
  """A user's database for re-ranking a given first round: mapped, read only where it is used.

  A float32 C-order (N, C) ``.npy`` with N > C is memory-mapped without reading a row (its
  header checked against the file's size); ``first_round.MappedRows`` then checks and
  L2-normalises each row as the re-ranker reads it. Anything else is ``load_database``'s: read
  and validated whole (small or non-.npy files).

  Args:
    path: the file.

  Returns:
    db_NxC: a ``MappedRows``, or an array (``load_database``).
  """
  path = os.fspath(path)
  if containers.file_format(path) == "npy":
    mm = npyio.load_npy(path, mmap=True)
    if large_descriptors.in_place(mm):
      log.info("%s: db: found (n, C) = %s; memory-mapped, rows read and checked only as the "
               "first round names them", path, mm.shape)
      return first_round.MappedRows(mm, path)
    del mm
  return load_database(path)


_ID = re.compile(r"-?[0-9]+")


def _text_ids(path: str) -> np.ndarray:
  """(Q, T) ids from text: one query a line, ids separated by commas or white space."""
  raw = read_regular(path, "a readable first-round ids file")
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    raise fail(path, "file", "UTF-8 text (one query a line, integer db ids)",
               "bytes that are not UTF-8") from None
  rows = []
  for n, line in enumerate(text.splitlines(), 1):
    toks = line.replace(",", " ").split()
    if not toks:
      continue
    bad = next((t for t in toks if not _ID.fullmatch(t)), None)
    if bad is not None:
      raise fail(path, f"line {n}", "integer db ids separated by commas or white space",
                 repr(bad[:40]))
    rows.append([int(t) for t in toks])
  if not rows:
    raise fail(path, "ids", "one line of db ids per query", "no ids")
  widths = sorted({len(r) for r in rows})
  if len(widths) != 1:
    n = next(i for i, r in enumerate(rows) if len(r) != len(rows[0]))
    raise fail(path, f"ids[{n}]", f"T = {len(rows[0])} ids, as the first row (pad a short row "
               "with -1)", f"{len(rows[n])}")
  try:
    return np.array(rows, np.int64)
  except OverflowError:
    raise fail(path, "ids", "db ids that fit int64", "a larger number") from None


def load_first_round(path, n_queries: int, n_db: int, K: int, L: int) -> np.ndarray:
  """A first-round ranking from any engine, checked by ``first_round.check_first_round``.

  Read through the project's readers: a ``.npy`` (``np.save(path, ids)``), an ``.npz`` (its
  'ids' entry, as ``csa-jax rerank`` writes, or its only one), JSON or pickle (a list of
  rows); a name ending in .txt / .csv / .tsv is text, one query a line, ids separated by commas
  or white space.

  Args:
    path: the file.
    n_queries: Q, the queries' count (one row each).
    n_db: N, the database's rows.
    K: candidates re-ranked per query.
    L: the model's anchors.

  Returns:
    ids_QxT int64, best first; -1 only as trailing padding.
  """
  path = os.fspath(path)
  if path.lower().endswith((".txt", ".csv", ".tsv")):
    ids = _text_ids(path)
  else:
    obj = containers.load_container(path)
    if isinstance(obj, dict) and "ids" in obj:
      obj = obj["ids"]
    ids = containers.pick(obj, path, None, "first-round ids")
    if isinstance(ids, (list, tuple)):
      try:
        ids = np.asarray(ids)
      except (ValueError, TypeError, RecursionError):
        raise fail(path, "ids", "a (Q, T) array of integer db ids (rows of one length; pad "
                   "with -1)", containers.describe(ids)) from None
    if not isinstance(ids, np.ndarray):
      raise fail(path, "ids", "a (Q, T) array of integer db ids", containers.describe(ids))
  ids = first_round.check_first_round(ids, n_db, K, L, path, "ids")
  if len(ids) != n_queries:
    raise fail(path, "ids", f"one row per query (Q={n_queries})", f"{len(ids)} rows")
  return ids.astype(np.int64, copy=False)


def load_queries(path, dim: int | None = None) -> np.ndarray:
  """A user's query descriptors, (Q, C) float32 with unit rows (a dict: its 'query' entry).

  Args:
    path: the file.
    dim: the database's C, which the queries must share (also decides their orientation).

  Returns:
    q_QxC (``descriptors.as_descriptors``).
  """
  path = os.fspath(path)
  obj = containers.load_container(path)
  return descriptors.as_descriptors(_entry(obj, path, "query"), path, "query", dim=dim)


def rerank(q_QxC, db, model, K: int, T: int | None = None, *, L: int | None = None,
           batch_size: int | None = None, search_dtype: str = "float32",
           block: int | None = None, devices=None, progress: bool = False, source: str = "db"):
  """Deprecated: use ``search_and_rerank(q_QxC, db, model, K, T)`` (``retrieval.rerank``).

  The same arguments and result as ``search_and_rerank``, plus ``L``: None takes the model's
  anchors, any other value is refused.

  Returns:
    (ids_QxT int64, scores_QxT float32), as ``search_and_rerank``.
  """
  warnings.warn("csa_jax: rerank is deprecated; use search_and_rerank (see CHANGELOG.md)",
                DeprecationWarning, stacklevel=2)
  if L is not None:
    cfg = validate.check_model(model, "rerank").cfg
    if L != cfg.anchors:
      raise fail("rerank", "L", f"{cfg.anchors} (the model's anchors)", str(L))
  return rerank_lib._search_and_rerank(  # pylint: disable=protected-access  (its messages)
      "rerank", q_QxC, db, model, K, T, batch_size, search_dtype, block, devices, progress,
      source)
