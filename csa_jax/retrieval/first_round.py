"""A first round from any engine: the rule its ids must keep, and a database read only where used.

CSA re-ranks the first K candidates of each query and takes the first L-1 as anchors
(docs/method.md section 1), so an engine's (Q, T) ids are used in their order, best first. The
rule ``check_first_round`` applies (docs/first_round.md):

- integers (any int/uint dtype), a (Q, T) array;
- each id in [0, N), or -1: padding, as FAISS writes when it found fewer than T; -1 may only
  follow a row's last id (a -1 before an id means the row is not a ranking);
- at least max(K, L-1) ids before a row's padding: CSA's token count and anchors are fixed per
  batch, so a shorter row is refused (retrieve more) rather than re-ranked on fewer candidates;
- no id twice within a row (within its first ``distinct_cols`` columns, when given): a duplicate
  means a broken engine, and would enter CSA twice or be listed twice in the ranking.

``MappedRows`` wraps an (N, C) memory map so that only the rows indexed are read, checked as
they are read; ``first_round_scores`` gives the descriptor dot products of a ranking's tail from
those rows alone, and ``exact_order`` re-sorts an approximate engine's candidates by them.
Nothing here reads a database whole.
"""

from __future__ import annotations

import logging

import numpy as np

from csa_jax.core.normalize import NORM_TOL, l2_normalize
from csa_jax.errors import fail
from csa_jax.retrieval import validate

log = logging.getLogger(__name__)

PAD = -1  # an empty slot at the end of a row (FAISS's "fewer found")
_BLOCK_BYTES = 64 << 20  # rows gathered per step of first_round_scores


def needed(K: int, L: int) -> int:
  """The ids CSA reads per query: K candidates and L-1 anchors, both from the row's start."""
  return max(K, L - 1)


def check_first_round(ids_QxT, n_db: int, K: int, L: int, who: str, field: str = "ids_QxT",
                      distinct_cols: int | None = None) -> np.ndarray:
  """A first-round ranking CSA can re-rank, by the rule of this module's docstring.

  Args:
    ids_QxT: (Q, T) db ids, best first; -1 only as padding after a row's last id.
    n_db: database rows N.
    K: candidates re-ranked per query.
    L: the model's anchors.
    who: the function or file, first in messages.
    field: the argument's name in messages.
    distinct_cols: only these leading columns must be distinct (None: the whole row).

  Returns:
    ids_QxT as a host integer array of its own dtype (not copied when already numpy).

  Raises:
    InputError: naming the row (and column) of the first id that breaks the rule.
  """
  ids = np.asarray(ids_QxT)
  if ids.ndim != 2:
    raise fail(who, field, "a (Q, T) array of db ids, best first", f"shape {ids.shape}")
  if ids.dtype.kind not in "iu":
    raise fail(who, field, "integer db ids", f"dtype {ids.dtype}")
  need = needed(K, L)
  nq, t = ids.shape
  if t < need:
    raise fail(who, field, f"at least max(K, L-1) = {need} ranked images per query (K={K}, "
               f"L={L}, the model's anchors)", f"{t}")
  if not ids.size:
    return ids
  rule = f"db ids in [0, N={n_db}) (0-based), -1 only as padding after a row's last id"
  bad = ids >= n_db if ids.dtype.kind == "u" else (ids < PAD) | (ids >= n_db)
  if bad.any():
    q, j = np.argwhere(bad)[0]
    raise fail(who, f"{field}[{q}, {j}]", rule, str(int(ids[q, j])))
  pad = ids == PAD if ids.dtype.kind == "i" else np.zeros(ids.shape, bool)
  # A row's ids before its first -1; any id after that -1 breaks the rule.
  lead = np.where(pad.any(axis=1), pad.argmax(axis=1), t)
  valid = ~pad
  late = valid.sum(axis=1) != lead
  if late.any():
    q = int(np.flatnonzero(late)[0])
    j = int(lead[q])
    j2 = j + int(valid[q, j:].argmax())
    raise fail(who, f"{field}[{q}, {j}]", rule, f"-1 before db id {int(ids[q, j2])} (column "
               f"{j2})")
  short = lead < need
  if short.any():
    q = int(np.flatnonzero(short)[0])
    raise fail(who, f"{field}[{q}]", f"at least max(K, L-1) = {need} db ids before any -1 "
               f"padding (K={K} candidates, L-1={L - 1} anchors; retrieve more per query)",
               f"{int(lead[q])} ids")
  cols = t if distinct_cols is None else min(t, distinct_cols)
  used = ids[:, :cols].astype(np.int64)  # in [-1, N): fits int64 whatever the dtype
  # Padding gets a distinct negative value per column, so only real ids can collide.
  used = np.sort(np.where(pad[:, :cols], -2 - np.arange(cols), used), axis=1)
  dup = used[:, 1:] == used[:, :-1]
  if dup.any():
    q, j = np.argwhere(dup)[0]
    v = int(used[q, j])
    where = np.flatnonzero(ids[q, :cols] == v)
    scope = "in a row" if cols == t else f"in the first {cols} columns"
    raise fail(who, f"{field}[{q}]", f"distinct db ids {scope} (a duplicate means a broken first "
               "round)", f"id {v} twice (columns {int(where[0])} and {int(where[1])})")
  return ids


class MappedRows:
  """An (N, C) float32 memory map that is read only where it is indexed.

  ``rows[idx]`` reads the rows ``idx`` (an integer array; a memmap's fancy index touches only
  their pages), refuses a NaN/inf or all-zero row naming its db id, and returns them float32 and
  L2-normalised (a warning the first time a row was not unit-norm), as the full-file check of
  ``data.large_descriptors.load_large`` would have given them. Has ``shape``, ``dtype`` and ``len``;
  the re-ranking drivers take it where they take a memmap.
  """

  checks_reads = True  # validate.rows_need_check: its rows need no second check

  def __init__(self, mm, source: str = "db"):
    if getattr(mm, "ndim", None) != 2:
      raise ValueError(f"MappedRows: expected an (N, C) array, got shape {np.shape(mm)}")
    self._mm = mm
    self.source = source
    self.shape = tuple(int(s) for s in mm.shape)
    self.dtype = np.dtype(np.float32)
    self.ndim = 2
    self._warned = False

  def __len__(self) -> int:
    return self.shape[0]

  def _read(self, rows_R: np.ndarray) -> np.ndarray:
    """The one place the file is read: rows ``rows_R`` as a float32 array."""
    return np.asarray(self._mm[rows_R], np.float32)

  def __getitem__(self, idx) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
      raise TypeError(f"MappedRows: index rows by an integer array, got {idx.dtype}")
    flat = idx.ravel()
    n, c = self.shape
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= n):  # never wrap or clamp
      raise IndexError(f"MappedRows: rows in [0, {n}), got {int(flat.min())}..{int(flat.max())}")
    rows = self._read(flat)
    norms = validate.finite_row_norms(rows, flat, self.source)
    if (norms == 0).any():
      raise fail(self.source, f"db[{int(flat[np.argmax(norms == 0)])}]", "non-zero descriptors",
                 "an all-zero row")
    off = np.abs(norms - 1) > NORM_TOL
    if off.any():
      if not self._warned:
        self._warned = True
        log.warning("%s: db: rows are not L2-normalised (db[%d] has norm %.4g); re-normalising "
                    "each row as it is read", self.source, int(flat[np.argmax(off)]),
                    float(norms[np.argmax(off)]))
      rows[off] = l2_normalize(rows[off])
    return rows.reshape(idx.shape + (c,))


def first_round_scores(q_QxC, db, ids_QxT, start: int = 0) -> np.ndarray:
  """Dot products of each query with its ranked db rows from column ``start`` on.

  Only the rows the ranking names are read (``db[rows]``, sorted, in steps of about 64 MB), so
  a memory-mapped or ``MappedRows`` database is never read whole. Accumulated in float64,
  rounded to float32.

  Args:
    q_QxC: (Q, C) unit queries.
    db: (N, C) unit database: numpy array, memmap, ``MappedRows`` or ``StackedRows``.
    ids_QxT: a ranking checked by ``check_first_round`` (-1 padding allowed).
    start: the first column scored.

  Returns:
    float32 scores_Qx(T-start); NaN where the id is -1 padding.
  """
  ids = np.asarray(ids_QxT)[:, start:]
  q = np.asarray(q_QxC, np.float32)
  nq, width = ids.shape
  out = np.full((nq, width), np.nan, np.float32)
  step = max(1, _BLOCK_BYTES // (4 * db.shape[1] * max(1, width)))
  for a in range(0, nq, step):
    blk = ids[a:a + step]
    valid = blk != PAD
    rows, local = np.unique(blk[valid], return_inverse=True)
    if not rows.size:
      continue
    sub = np.asarray(db[rows], np.float32)
    qi = np.nonzero(valid)[0]  # row-major, as blk[valid]
    o = out[a:a + step]
    o[valid] = np.einsum("rc,rc->r", q[a:a + step][qi], sub[local], dtype=np.float64)
  return out


def exact_order(q_QxC, db, ids_QxT) -> np.ndarray:
  """Each row's ids re-sorted by their exact descriptor dot product with the query.

  For an approximate engine (PQ codes, quantised scores), whose order among its candidates is
  itself approximate: CSA's anchors are the first L-1 ids of a row, so their order matters.
  Reads only the rows named (``first_round_scores``).

  Args:
    q_QxC: (Q, C) unit queries.
    db: (N, C) unit database, as ``first_round_scores`` takes it.
    ids_QxT: a ranking checked by ``check_first_round``.

  Returns:
    ids_QxT re-ordered by descending dot product (stable: ties keep the engine's order), -1
    padding still last.
  """
  ids = np.asarray(ids_QxT)
  s = first_round_scores(q_QxC, db, ids).astype(np.float64)
  s[np.isnan(s)] = -np.inf  # padding: after every real score, in place
  return np.take_along_axis(ids, np.argsort(-s, axis=1, kind="stable"), axis=1)
