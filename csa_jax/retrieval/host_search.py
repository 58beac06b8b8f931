"""The first-round search on the CPU backend: XLA's dot per block, the top-T merged in numpy.

On CPU "the device" is the host, so only the dot products are worth handing to XLA (whose
XLA:CPU dot beats numpy's OpenBLAS at these shapes, measured in docs/benchmarks.md). Each block of
mapped db rows (aliased by ``device_put``, not copied) becomes one (B, Q) dot, whose result is
already host memory; it is copied once, transposed, into its slice of ``scores_out``, and the
running top-T is merged in numpy: once a query's list is full only scores above its T-th can
enter, so most blocks cost one comparison beyond the dot and that copy. No top_k over the block,
no device-side lists. The next block's dot is dispatched before this block's copy and merge.
Results equal ``search.top_k_search``'s jax path on exact data (same lists, ties by lower db
index); on real data the two may round a few dot products differently.
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from csa_jax.retrieval import validate

NO_INDEX = np.iinfo(np.int32).max  # empty slots of a running top-T sort after every real entry
DEFAULT_BLOCK_BYTES = 128 << 20  # db bytes per dot: 64-256 MB ran alike, 512 MB slower

log = logging.getLogger(__name__)


@jax.jit
def _scores(x_BxC, q_QxC):
  # (B, Q), not (Q, B): XLA:CPU ran this orientation faster, and the copy out transposes anyway.
  return jnp.dot(x_BxC, q_QxC.T, precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32)


class RunningTopT:
  """Every query's running top-T over blocks of scores that come in db index order.

  Each row is a pool: its top-T as of the last compaction, sorted, then the candidates of later
  blocks in index order. A candidate must beat the row's T-th at that compaction (an equal one
  has a higher index than all T kept), so after the first blocks few do, and the pool is sorted
  only when it fills, not every block. Within a pool, equal scores lie in index order, so one
  stable sort orders it by (score descending, index ascending).
  """

  def __init__(self, nq: int, t: int):
    self.t = t
    self.room = min(t, 4096)  # candidates a pool takes beyond its T before it is sorted
    self.v_QxP = np.full((nq, t + self.room), -np.inf, np.float32)
    self.i_QxP = np.full((nq, t + self.room), NO_INDEX, np.int32)
    self.n_Q = np.zeros(nq, np.int64)  # entries in each pool
    self.lo_Q = np.full(nq, -np.inf, np.float32)  # T-th score at the last compaction

  def add(self, s_QxB, start: int) -> None:
    """Adds the scores of db rows start..start+B (any strides); NaN never enters."""
    t, b = self.t, s_QxB.shape[1]
    enter_QxB = s_QxB > self.lo_Q[:, None]
    open_Q = self.n_Q < t  # not yet T entries: lo is -inf and a real -inf enters too
    if open_Q.any():
      enter_QxB[open_Q] |= s_QxB[open_Q] == -np.inf
    flat = np.flatnonzero(enter_QxB)  # row-major: each row's candidates in index order
    if not flat.size:
      return
    r, col = np.divmod(flat, b)
    count_Q = np.bincount(r, minlength=len(self.n_Q))
    if b > t and count_Q.max() > self.room:  # e.g. the first block: its top-T (and ties) only
      big = np.flatnonzero(count_Q > self.room)
      s_RxB = np.where(enter_QxB[big], s_QxB[big], -np.inf)
      kth_R = np.partition(s_RxB, b - t, axis=1)[:, b - t]
      enter_QxB[big] &= s_RxB >= kth_R[:, None]
      r, col = np.divmod(np.flatnonzero(enter_QxB), b)
      count_Q = np.bincount(r, minlength=len(self.n_Q))
    full = np.flatnonzero(self.n_Q + count_Q > self.v_QxP.shape[1])
    if full.size:
      self._compact(full)
      need = int((self.n_Q + count_Q).max())
      if need > self.v_QxP.shape[1]:  # only when many scores tie with a block's T-th
        grow = need - self.v_QxP.shape[1]
        self.v_QxP = np.pad(self.v_QxP, ((0, 0), (0, grow)), constant_values=-np.inf)
        self.i_QxP = np.pad(self.i_QxP, ((0, 0), (0, grow)), constant_values=NO_INDEX)
    at = self.n_Q[r] + np.arange(r.size) - (np.cumsum(count_Q) - count_Q)[r]
    self.v_QxP[r, at] = s_QxB[r, col]
    self.i_QxP[r, at] = start + col
    self.n_Q += count_Q
    # A row's first T entries: sort them now, so that its bar rises from -inf at once.
    first = np.flatnonzero((self.n_Q >= t) & (self.lo_Q == -np.inf))
    if first.size:
      self._compact(first)

  def _compact(self, rows) -> None:
    """Sorts the pools of ``rows`` and keeps their top-T."""
    t, p = self.t, self.v_QxP.shape[1]
    v, i = self.v_QxP[rows], self.i_QxP[rows]
    key = np.where(np.arange(p) < self.n_Q[rows, None], -v, np.nan)  # empty slots: NaN, last
    order = np.argsort(key, axis=1, kind="stable")
    v, i = np.take_along_axis(v, order, 1), np.take_along_axis(i, order, 1)
    v[:, t:], i[:, t:] = -np.inf, NO_INDEX
    self.v_QxP[rows], self.i_QxP[rows] = v, i
    self.n_Q[rows] = np.minimum(self.n_Q[rows], t)
    self.lo_Q[rows] = np.where(self.n_Q[rows] == t, v[:, t - 1], -np.inf)

  def result(self):
    """(scores_QxT, idx_QxT), rows by descending score, ties by lower db index."""
    self._compact(np.arange(len(self.n_Q)))
    return self.v_QxP[:, :self.t].copy(), self.i_QxP[:, :self.t].copy()


def host_top_k(q_QxC, rows_of, n: int, T: int, block: int | None = None,
               scores_out: np.ndarray | None = None, progress: bool = False, device=None,
               source: str = "db"):
  """Exact float32 top-T of every query over db rows [0, n): XLA:CPU dots, a numpy merge.

  Args:
    q_QxC: (Q, C) queries.
    rows_of: ``search._Rows``-like source: ``rows_of(a, b)`` gives rows [a, b) as a numpy array
      (a view of a memmap), ``prefetch(a, b)`` / ``release(a, b)`` advise their pages.
    n: db rows.
    T: results per query, 1 <= T <= n.
    block: db rows per dot; default about 128 MB of rows.
    scores_out: optional (Q, n) array filled with every score.
    progress: log the rows done, the rate and an ETA every 5 s.
    device: the CPU device that runs the dots (default: the first).
    source: the database's file, for the error a non-finite row raises.

  Returns:
    (scores_QxT float32, idx_QxT int32), rows by descending score, ties by lower db index.
  """
  q = np.asarray(q_QxC, np.float32)
  nq, c = q.shape
  device = device or jax.devices("cpu")[0]
  q_dev = jax.device_put(q, device)
  rows = max(1, min(n, block or DEFAULT_BLOCK_BYTES // (4 * c)))
  top = RunningTopT(nq, T)
  # The merge reads float32 rows: scores_out's own slice when it is float32, else a buffer.
  direct = scores_out is not None and scores_out.dtype == np.float32
  buf = None if direct else np.empty((nq, rows), np.float32)

  def finish(a, b, s_dev):
    s_BxQ = np.asarray(s_dev)  # waits for the dot; a view of its buffer on CPU
    rows_of.release(a, b)
    s_QxB = scores_out[:, a:b] if direct else buf[:, :b - a]
    np.copyto(s_QxB, s_BxQ.T)
    if scores_out is not None and not direct:
      scores_out[:, a:b] = s_QxB
    if not np.isfinite(s_QxB).all():  # a NaN never enters the top-T: the row would vanish
      rows = rows_of(a, b)
      raise validate.nonfinite_db_error(source, validate.first_nonfinite_row(rows, a), a, b)
    top.add(s_QxB, a)

  pending = None
  t0 = last = time.perf_counter()
  for a in range(0, n, rows):
    b = min(n, a + rows)
    rows_of.prefetch(b, min(n, b + rows))
    x = jax.device_put(np.asarray(rows_of(a, b), np.float32), device)  # aliased when aligned
    s_dev = _scores(x, q_dev)  # the last, shorter block compiles once more
    del x
    if pending is not None:
      finish(*pending)
    pending = (a, b, s_dev)
    now = time.perf_counter()
    if progress and (now - last > 5 or b == n):
      last = now
      log.info("search: %d/%d db rows (%.0f%%), %.0f rows/s, ETA %.0f s", b, n, 100 * b / n,
               b / (now - t0), (now - t0) * (n - b) / b)
  finish(*pending)
  return top.result()
