"""The first-round search on the CPU: one BLAS sgemm per block in worker threads, top-T in numpy.

On CPU "the device" is the host. The db is cut into blocks of rows and one worker thread per core
takes the next block in index order: one single-threaded sgemm of the queries with the block's
mapped rows (a view of the memmap, never copied), written straight into the block's slice of
``scores_out`` (so the dot is the copy), then the block's checks (non-finite scores; a caller's
``check``, e.g. a file's rows checked as they are searched), the release of its pages and the
merge into the worker's own running top-T, all in the thread that scored it. One sort merges
the workers' lists at the end. Independent single-threaded workers beat one
multi-threaded sgemm per block: that one waits at every block for its slowest thread, and a
single busy neighbour process stretches every wait. Where a thread's BLAS threads cannot be set
(numpy not on OpenBLAS), one worker runs the library's multi-threaded sgemm.

Results equal ``search.top_k_search``'s jax path on exact data (same lists, ties by lower db
index); on real data the two may round a few dot products differently.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import logging
import os
import threading
import time

import numpy as np

from csa_jax.retrieval import validate

NO_INDEX = np.iinfo(np.int32).max  # empty slots of a running top-T sort after every real entry
DEFAULT_BLOCK_BYTES = 32 << 20  # db bytes per sgemm: ~12 ms of one core, a few ms of overhead
MAX_WORKERS = 64  # one worker per core, up to this: each needs ~3 GB/s of rows at full speed

log = logging.getLogger(__name__)


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


def merge_lists(v_QxM, i_QxM, t: int):
  """The top-t of several running lists side by side: score descending, then lower index.

  Args:
    v_QxM: scores; empty slots -inf.
    i_QxM: their db indices; empty slots ``NO_INDEX`` (after every real -inf).
    t: entries kept per row.

  Returns:
    (scores_QxT, idx_QxT).
  """
  order = np.lexsort((i_QxM, -v_QxM))[:, :t]  # keys last-first: -score, then index
  return np.take_along_axis(v_QxM, order, 1), np.take_along_axis(i_QxM, order, 1)


@functools.lru_cache(maxsize=1)
def _thread_blas_setter():
  """OpenBLAS's ``openblas_set_num_threads_local(k)`` (returns the previous count), or None.

  Looked up in the OpenBLAS numpy has loaded (``/proc/self/maps``, numpy's own copy first); None
  where there is no such library or function (another BLAS, OpenBLAS before 0.3.27, no /proc).
  Some builds set the process's count with it, not the calling thread's: callers set it in every
  thread that needs it and put the previous count back.
  """
  try:
    with open("/proc/self/maps") as f:
      paths = {line.split(None, 5)[-1].strip() for line in f
               if "openblas" in line.lower() and ".so" in line and "/" in line}
  except OSError:
    return None
  mine = os.path.dirname(np.__file__)  # .../numpy: also the prefix of a wheel's numpy.libs
  for path in sorted(paths, key=lambda p: (not p.startswith(mine), p)):
    try:
      fn = ctypes.CDLL(path).openblas_set_num_threads_local
    except (OSError, AttributeError):
      continue
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn
  return None


class _SingleThreadedBlas:
  """BLAS at one thread while any search's workers run; the count before is put back after the
  last one ends (searches may overlap, from several threads)."""

  def __init__(self):
    self.lock = threading.Lock()
    self.users = 0
    self.before = None

  def __enter__(self):
    with self.lock:
      if not self.users:
        self.before = _thread_blas_setter()(1)
      self.users += 1

  def __exit__(self, *exc):
    with self.lock:
      self.users -= 1
      if not self.users:
        _thread_blas_setter()(self.before)


_single_threaded_blas = _SingleThreadedBlas()


def cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def host_top_k(q_QxC, rows_of, n: int, T: int, block: int | None = None,
               scores_out: np.ndarray | None = None, progress: bool = False,
               source: str = "db", check=None, workers: int | None = None):
  """Exact float32 top-T of every query over db rows [0, n): BLAS sgemm workers, a numpy merge.

  Args:
    q_QxC: (Q, C) queries.
    rows_of: ``search._Rows``-like source: ``rows_of(a, b)`` gives rows [a, b) as a numpy array
      (a view of a memmap), ``prefetch(a, b)`` / ``release(a, b)`` advise their pages (read
      ahead; dropped once scored).
    n: db rows.
    T: results per query, 1 <= T <= n.
    block: db rows per sgemm; default about 32 MB of rows.
    scores_out: optional (Q, n) array filled with every score (a float32 one is written in
      place by the sgemm).
    progress: log the rows done, the rate and an ETA every 5 s.
    source: the database's file, for the error a non-finite row raises.
    check: optional ``check(start, rows_BxC)`` called on every block once scored, before its
      scores are used; whatever it raises ends the search (the lowest block's error wins).
    workers: worker threads (default: one per core where BLAS can run single-threaded in each,
      else one).

  Returns:
    (scores_QxT float32, idx_QxT int32), rows by descending score, ties by lower db index.

  Raises:
    InputError: from ``check``, or a block whose scores are not finite; the one of the lowest
      block when several fail.
  """
  q = np.ascontiguousarray(q_QxC, np.float32)
  nq, c = q.shape
  rows = max(1, min(n, block or DEFAULT_BLOCK_BYTES // (4 * c)))
  starts = range(0, n, rows)
  setter = _thread_blas_setter()
  if workers is None:
    workers = min(cores(), MAX_WORKERS) if setter is not None else 1
  workers = max(1, min(workers, len(starts)))
  direct = isinstance(scores_out, np.ndarray) and scores_out.dtype == np.float32
  tops = [RunningTopT(nq, T) for _ in range(workers)]
  done = [0] * workers  # rows scored, per worker (progress)
  failures = []  # (block start, exception)
  taken = itertools.count()  # next block: next() on a count is atomic under the GIL
  stop = threading.Event()

  def score(w: int, a: int, buf):
    b = min(n, a + rows)
    ahead = a + workers * rows  # the next block not yet taken: read ahead of a file not cached
    rows_of.prefetch(ahead, min(n, ahead + rows))
    x_BxC = np.ascontiguousarray(rows_of(a, b), np.float32)  # a view unless it must convert
    s_QxB = scores_out[:, a:b] if direct else buf[:, :b - a]
    np.matmul(q, x_BxC.T, out=s_QxB)
    if check is not None:
      check(a, x_BxC)
    if not np.isfinite(s_QxB).all():  # a NaN never enters the top-T: the row would vanish
      raise validate.nonfinite_db_error(source, validate.first_nonfinite_row(x_BxC, a), a, b)
    del x_BxC
    rows_of.release(a, b)
    if scores_out is not None and not direct:
      scores_out[:, a:b] = s_QxB
    tops[w].add(s_QxB, a)
    done[w] += b - a

  single = workers > 1 and setter is not None  # each sgemm on its worker's thread only

  def work(w: int):
    if single:
      setter(1)
    buf = None if direct else np.empty((nq, rows), np.float32)
    while not stop.is_set():
      i = next(taken)
      if i >= len(starts):
        return
      try:
        score(w, starts[i], buf)
      except BaseException as e:  # pylint: disable=broad-except  (re-raised by the caller)
        failures.append((starts[i], e))
        stop.set()  # blocks not yet taken lie after this one: only earlier ones still run
        return

  threads = [threading.Thread(target=work, args=(w,), name=f"csa_jax-search-{w}", daemon=True)
             for w in range(workers)]
  t0 = time.perf_counter()
  with _single_threaded_blas if single else contextlib.nullcontext():
    _run(threads, stop, progress, lambda: log_progress(sum(done), n, time.perf_counter() - t0))
  if failures:
    raise min(failures, key=lambda f: f[0])[1]
  if progress:
    log_progress(n, n, time.perf_counter() - t0)
  lists = [top.result() for top in tops]
  if workers == 1:
    return lists[0]
  return merge_lists(np.concatenate([v for v, _ in lists], 1),
                     np.concatenate([i for _, i in lists], 1), T)


def _run(threads, stop: threading.Event, progress: bool, report) -> None:
  """Starts the workers and waits for them, calling ``report()`` every 5 s with ``progress``."""
  last = time.perf_counter()
  try:
    for t in threads:
      t.start()
    for t in threads:
      while t.is_alive():
        t.join(1.0 if progress else None)
        if progress and time.perf_counter() - last > 5:
          last = time.perf_counter()
          report()
  finally:
    stop.set()  # an interrupt of the caller: the workers stop after their current block
    for t in threads:
      if t.ident is not None:  # started
        t.join()


def log_progress(b: int, n: int, seconds: float) -> None:
  """The search's progress line (both searches): rows done, rate, ETA."""
  log.info("search: %d/%d db rows (%.0f%%), %.0f rows/s, ETA %.0f s", b, n, 100 * b / n,
           b / max(seconds, 1e-9), seconds * (n - b) / max(b, 1))
