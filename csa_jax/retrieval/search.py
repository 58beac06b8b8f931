"""First-round search (docs/method.md section 1, step 1): exact top-T by dot product, db in blocks.

The database is taken a block of rows at a time (from an array, or from a ``.npy`` memmap whose
pages are released once scored, so R1M's 8 GB never sit in RAM), scored on device and merged into
a running top-T. With several devices each step's block is split over the data axis
(``parallel.make_mesh``),
every device keeps its own running top-T, and one sort merges them at the end. Ties go to the
lower db index, as a stable sort would. On the CPU backend the search runs on the host instead
(``host_search``): BLAS sgemm workers, one per core, score the blocks straight into
``scores_out`` and numpy keeps the running top-T. A database whose rows are still to be checked
(``data.large_descriptors.DeferredRows``, e.g. R1M as ``csa-jax eval`` loads it) is checked block by
block as it is scored, in the same pass.
"""

from __future__ import annotations

import functools
import logging
import mmap
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from csa_jax import parallel
from csa_jax.retrieval import host_search
from csa_jax.retrieval import validate

SCORE_DTYPES = ("float32", "bfloat16")
IMPLS = ("auto", "jax", "host")
DEFAULT_BLOCK_BYTES = 64 << 20  # db bytes per step: large enough to amortise the merge
CANDIDATES = 128  # per block and query, when few can enter the running top-T (see below)
_NO_INDEX = host_search.NO_INDEX  # empty slots of a running top-T sort after every real entry

log = logging.getLogger(__name__)


def _score_and_merge(vals_1xQxT, idx_1xQxT, q_QxC, x_1xBxC, start, n, dtype, kc):
  """One device's step: score its block, merge it into its running top-T."""
  b, t = x_1xBxC.shape[1], vals_1xQxT.shape[-1]
  if dtype == "bfloat16":
    s = jnp.einsum("qc,dbc->dqb", q_QxC.astype(jnp.bfloat16), x_1xBxC.astype(jnp.bfloat16),
                   preferred_element_type=jnp.float32)
  else:
    s = jnp.einsum("qc,dbc->dqb", q_QxC.astype(jnp.float32), x_1xBxC.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
  ids = start + jax.lax.axis_index(parallel.DATA_AXIS) * b + jnp.arange(b, dtype=jnp.int32)
  # A NaN score would never enter the top-T: the db row would vanish from the ranking unseen.
  # Counted here (padding rows are zeros), refused by the caller.
  bad = jnp.sum(~jnp.isfinite(s), dtype=jnp.int32).reshape(1)
  s = jnp.where(ids < n, s, -jnp.inf)  # rows past the db end (padding)
  ids = jnp.broadcast_to(ids, s.shape)

  # Earlier blocks hold lower indices and come first in the concatenation, and top_k puts the
  # lower position first among equals: ties keep the lower db index first.
  def merge(cand_v, cand_i):
    v, pos = jax.lax.top_k(jnp.concatenate([vals_1xQxT, cand_v], -1), t)
    return v, jnp.take_along_axis(jnp.concatenate([idx_1xQxT, cand_i], -1), pos, -1)

  if not kc:
    return (*merge(s, ids), s, bad)

  # Only scores above the running T-th can enter (an equal one has a higher index than all the
  # T kept). Once the list is full, few per block do: when at most kc per query, the block's
  # top-kc holds them all and a small top_k replaces the one over the whole block.
  above = jnp.sum(s > vals_1xQxT[..., t - 1:], axis=-1)

  def few():
    cv, cp = jax.lax.top_k(s, kc)
    return merge(cv, jnp.take_along_axis(ids, cp, -1))

  return (*jax.lax.cond(jnp.max(above) <= kc, few, lambda: merge(s, ids)), s, bad)


@functools.lru_cache(maxsize=32)
def _step_fn(mesh: Mesh, dtype: str, keep_scores: bool, kc: int):
  """The jitted step for a mesh: each device scores and merges its own shard of the block.

  shard_map keeps top_k per device (the automatic partitioner would all-gather before it).
  """

  def step(vals, idx, q, x, start, n):
    v, i, s, bad = _score_and_merge(vals, idx, q, x, start, n, dtype, kc)
    return (v, i, bad, s) if keep_scores else (v, i, bad)

  spec = P(parallel.DATA_AXIS)
  out = (spec, spec, spec, spec) if keep_scores else (spec, spec, spec)
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(spec, spec, P(), spec, P(), P()),
                               out_specs=out))


@functools.partial(jax.jit, static_argnames="t")
def _merge_devices(vals_DxQxT, idx_DxQxT, t):
  """One (score descending, index ascending) sort of all devices' running lists."""
  nq = vals_DxQxT.shape[1]
  v = jnp.moveaxis(vals_DxQxT, 0, 1).reshape(nq, -1)
  i = jnp.moveaxis(idx_DxQxT, 0, 1).reshape(nq, -1)
  neg, i = jax.lax.sort((-v, i), dimension=1, num_keys=2)
  return -neg[:, :t], i[:, :t]


class _Rows:
  """db rows [a, b) as an array the device can use, without copying a memmap.

  A block of a memmap is a view of the file mapping; a 64-byte aligned view is aliased by
  ``device_put`` on CPU (no copy at all). Pages of a file mapping count as the process's memory
  while mapped, so blocks already scored are released (MADV_DONTNEED: the page cache keeps them,
  a later access re-reads them) and the next block is prefetched (MADV_WILLNEED), keeping the
  resident size to a few blocks, not the 8 GB of R1M.
  """

  def __init__(self, db):
    self.db = db
    # Only shared mappings: releasing pages of a copy-on-write ("c") one would drop edits.
    shared = isinstance(db, np.memmap) and getattr(db, "mode", "c") in ("r", "r+", "w+")
    self.mm = getattr(db, "_mmap", None) if shared else None
    if self.mm is not None:
      self.base = np.frombuffer(self.mm, np.uint8).ctypes.data
      self.end = self.base + len(self.mm)

  def __call__(self, a: int, b: int):
    if isinstance(self.db, jax.Array):  # one compiled slice for every start
      return jax.lax.dynamic_slice_in_dim(self.db, a, b - a)
    return np.asarray(self.db[a:b])  # a view for numpy arrays and memmaps

  def _advise(self, a: int, b: int, advice: int):
    if self.mm is None or b <= a:
      return
    lo = self.db[a:b].ctypes.data
    hi = lo + (b - a) * self.db[:1].nbytes
    lo -= (lo - self.base) % mmap.PAGESIZE
    hi = min(self.end, hi + (-(hi - self.base)) % mmap.PAGESIZE)
    try:
      self.mm.madvise(advice, lo - self.base, hi - lo)
    except (OSError, ValueError, AttributeError):  # advice only: never fatal
      pass

  def prefetch(self, a: int, b: int):
    self._advise(a, b, getattr(mmap, "MADV_WILLNEED", 3))

  def release(self, a: int, b: int):
    self._advise(a, b, getattr(mmap, "MADV_DONTNEED", 4))


class StackedRows:
  """Several (n_i, C) row sources (arrays, memmaps) as one database, never concatenated.

  E.g. a test set's db followed by the R1M distractors: row indices continue from one part to the
  next. Supports ``shape``, ``len`` and gathering rows by an integer index array.
  """

  def __init__(self, parts):
    self.parts = list(parts)
    widths = {p.shape[1] for p in self.parts}
    if len(widths) != 1:
      raise ValueError(f"StackedRows: parts differ in width: {sorted(widths)}")
    self.offsets = np.cumsum([0] + [p.shape[0] for p in self.parts])
    self.shape = (int(self.offsets[-1]), widths.pop())

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, rows) -> np.ndarray:
    rows = np.asarray(rows)
    out = np.empty(rows.shape + self.shape[1:], np.float32)
    part = np.searchsorted(self.offsets, rows, side="right") - 1
    for i, p in enumerate(self.parts):
      m = part == i
      if m.any():
        out[m] = np.asarray(p[rows[m] - self.offsets[i]])
    return out


def top_k_search(q_QxC, db, T: int, block: int | None = None, *, dtype: str = "float32",
                 devices=None, scores_out: np.ndarray | None = None, progress: bool = False,
                 impl: str = "auto", source: str = "db"):
  """Exact top-T of every query by dot product.

  A host driver, like the re-ranking drivers: it checks its inputs (``retrieval.validate``),
  shards the db blocks over a device mesh it builds, and returns numpy; not jittable.

  Args:
    q_QxC: queries (numpy or jax array).
    db: (N, C) jax/numpy array, numpy memmap (``np.load(path, mmap_mode='r')``, never read
      whole), ``data.large_descriptors.DeferredRows`` (a memmap whose rows are checked as they are
      scored) or ``StackedRows`` of those.
    T: results per query, 1 <= T <= N.
    block: db rows per step (rounded up to a multiple of the device count); default about 64 MB
      (on the host path: rows per sgemm, default about 32 MB).
    dtype: "float32" (exact float32 dot products) or "bfloat16" (bfloat16 inputs, float32
      accumulation: faster on accelerators, coarser scores).
    devices: devices to shard the db blocks over (default: all of ``jax.devices()``).
    scores_out: optional float32 (Q, N) host array filled with every score as a by-product (for
      the exact evaluator); it may be a writable memmap.
    progress: log the rows done, the rate and an ETA every 5 s.
    impl: "jax" (blocks scored and merged by XLA on the devices), "host" (float32 only: BLAS
      sgemm workers on the host's cores, the merge in numpy, ``host_search``) or "auto": "host"
      for float32 when every device is a local CPU device, else "jax".
    source: the database's file, named in error messages.

  Returns:
    (scores_QxT float32, idx_QxT int32) as numpy arrays, rows by descending score, ties by lower
    db index (a stable sort's order).

  Raises:
    InputError: a query that is not finite (checked first), or a db row whose scores are not
      finite (found as it is scored): a NaN could never rank, so it would vanish silently; for
      ``DeferredRows``, its check's error (the file's first NaN/inf or all-zero row).
  """
  if dtype not in SCORE_DTYPES:
    raise ValueError(f"top_k_search: dtype must be one of {SCORE_DTYPES}, got {dtype!r}")
  if impl not in IMPLS or (impl == "host" and dtype != "float32"):
    raise ValueError(f"top_k_search: impl must be one of {IMPLS} (host: float32 only), got "
                     f"{impl!r} with dtype {dtype!r}")
  n, c = db.shape
  q = validate.check_queries(q_QxC, c, "top_k_search", normalise=False)
  nq = q.shape[0]
  if not 1 <= T <= n:
    raise ValueError(f"top_k_search: T={T} must be in [1, N={n}]")
  if n >= _NO_INDEX:
    raise ValueError(f"top_k_search: db of {n} rows exceeds int32 indices")
  if scores_out is not None and scores_out.shape != (nq, n):
    raise ValueError(f"top_k_search: scores_out must be ({nq}, {n}), got {scores_out.shape}")
  if isinstance(db, StackedRows):
    vals, idx = [], []
    for p, off in zip(db.parts, db.offsets):
      if len(p):
        out = None if scores_out is None else scores_out[:, off:off + len(p)]
        v, i = top_k_search(q, p, min(T, len(p)), block, dtype=dtype, devices=devices,
                            scores_out=out, progress=progress, impl=impl, source=source)
        vals.append(v)
        idx.append(i + np.int32(off))
    return host_search.merge_lists(np.concatenate(vals, 1), np.concatenate(idx, 1), T)
  search = functools.partial(_search, q, T=T, block=block, dtype=dtype, devices=devices,
                             scores_out=scores_out, progress=progress, impl=impl, source=source)
  checked = getattr(db, "search_checked", None)  # rows checked as they are read (DeferredRows)
  if checked is not None:
    return checked(search)
  return search(db, None)


def _search(q, db, check, *, T, block, dtype, devices, scores_out, progress, impl, source):
  """top_k_search over one (N, C) array or memmap, ``check(start, rows)`` on every block read."""
  n, c = db.shape
  nq = q.shape[0]
  devices = list(devices or jax.devices())
  if impl == "auto":
    on_host = all(d.platform == "cpu" and d.process_index == jax.process_index() for d in devices)
    impl = "host" if on_host and dtype == "float32" else "jax"
  if impl == "host":
    # On CPU a jax array's buffer is host memory already: np.asarray views it (one device).
    rows_of = _Rows(np.asarray(db) if isinstance(db, jax.Array) else db)
    return host_search.host_top_k(np.asarray(q), rows_of, n, T, block, scores_out, progress,
                                  source, check)
  nd = len(devices)
  if block is None:
    block = max(1, DEFAULT_BLOCK_BYTES // (4 * c))
  per_dev = -(-min(block, n) // nd)
  rows = per_dev * nd
  mesh = parallel.make_mesh(devices)
  shard, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)

  q_dev = jax.device_put(q, repl)
  vals = jax.device_put(np.full((nd, nq, T), -np.inf, np.float32), shard)
  idx = jax.device_put(np.full((nd, nq, T), _NO_INDEX, np.int32), shard)
  kc = CANDIDATES if per_dev > 2 * CANDIDATES else 0  # else a full top_k costs about the same
  step = _step_fn(mesh, dtype, scores_out is not None, kc)
  rows_of = _Rows(db)
  steps = -(-n // rows)
  # Work is dispatched asynchronously: the host prepares block i+1 while the devices score
  # block i; the previous block's scores are fetched and its pages released one step late.
  pending, bads = None, []
  t0 = last = time.perf_counter()
  for i in range(steps):
    a, b = i * rows, min(n, (i + 1) * rows)
    rows_of.prefetch(b, min(n, b + rows))
    x = rows_of(a, b)
    if check is not None:
      check(a, np.asarray(x))
    if b - a < rows:  # pad the last block: one compiled shape for every step
      pad = ((0, rows - (b - a)), (0, 0))
      x = jnp.pad(x, pad) if isinstance(x, jax.Array) else np.pad(x, pad)
    x = jax.device_put(x.reshape(nd, per_dev, c), shard)
    vals, idx, bad, *s = step(vals, idx, q_dev, x, np.int32(a), np.int32(n))
    bads.append((a, b, bad))
    if pending is not None:
      _finish(scores_out, rows_of, *pending)
    pending = (a, b, vals, s[0] if s else None)
    now = time.perf_counter()
    if progress and (now - last > 5 or i == steps - 1):
      last = now
      host_search.log_progress(b, n, now - t0)
  _finish(scores_out, rows_of, *pending)
  for a, b, bad in bads:
    if np.asarray(bad).any():
      rows = rows_of(a, b)
      raise validate.nonfinite_db_error(source, validate.first_nonfinite_row(rows, a), a, b)
  top_v, top_i = _merge_devices(vals, idx, T)
  return np.asarray(top_v), np.asarray(top_i)


def _finish(out_QxN, rows_of, a, b, vals, s_DxQxB):
  """After block [a, b) is scored: copy its scores out, release its pages."""
  vals.block_until_ready()
  if out_QxN is not None:
    s = np.asarray(s_DxQxB)
    out_QxN[:, a:b] = np.moveaxis(s, 0, 1).reshape(s.shape[1], -1)[:, :b - a]
  rows_of.release(a, b)
