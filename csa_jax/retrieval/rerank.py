"""Re-ranking with CSA (docs/method.md section 1, steps 2-4): the host drivers, in batches.

Two drivers, both taking the model as ``model`` (a ``Model`` or a ``(params, cfg)`` tuple) right
after the data, and the anchors L from ``model.cfg.anchors``:

- ``rerank_shortlist(q_QxC, db, top_QxT, model, K)``: re-rank a first-round list the caller has
  (the original test.py's job) -> (ids_QxT, scores_QxK);
- ``search_and_rerank(q_QxC, db, model, K, T=None)``: first-round search, then the above ->
  (ids_QxT, scores_QxT).

Both check their arguments (``retrieval.validate``; a first-round ranking by
``retrieval.first_round``'s rule: ids from any engine, -1 padding only after a row's last id),
and work without the original's per-query loop: a batch of queries at a time, the rows of the
database it needs gathered (from an array or a memmap: R1M is never read whole), the affinity
features and the model run on device, the batch split over the devices' data axis
(``parallel.make_mesh``); ``retrieval.reorder.reorder_top`` re-orders each top-K by the new
scores. ``csa_rerank`` and ``csa_scores`` are the deprecated signatures of before
(``params, cfg, ..., K, L``).
"""

from __future__ import annotations

import functools
import logging
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from csa_jax import parallel
from csa_jax.core.affinity import rerank_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import rerank_scores
from csa_jax.errors import fail
from csa_jax.retrieval import first_round, validate
from csa_jax.retrieval.batching import auto_batch_size
from csa_jax.retrieval.reorder import reorder_top
from csa_jax.retrieval.search import top_k_search

log = logging.getLogger(__name__)


# Traced, so rerank_affinity skips its host check of the ids: _scores made them itself (from
# np.unique), and that check would wait for the device at every batch.
_affinity = jax.jit(rerank_affinity, static_argnames=("K", "L"))


def _gather_rows(db_NxC, rows: np.ndarray, total: int, source: str):
  """db rows ``rows`` (sorted, unique) padded with zero rows to ``total``: one shape per batch.

  Rows read from a memmap or ``StackedRows`` are checked here, the only time CSA sees them (an
  in-memory db was checked whole by ``validate.check_database``).
  """
  if isinstance(db_NxC, jax.Array):
    sub = jnp.take(db_NxC, jnp.asarray(rows), axis=0)
    return jnp.pad(sub, ((0, total - len(rows)), (0, 0)))
  sub = np.zeros((total, db_NxC.shape[1]), np.float32)
  sub[:len(rows)] = db_NxC[rows]  # a memmap reads only these rows
  if validate.rows_need_check(db_NxC):
    validate.check_gathered_rows(sub[:len(rows)], rows, source)
  return sub


def _scores(params, cfg: ModelConfig, q_QxC, db_NxC, top_QxT, K: int,
            batch_size: int | None = None, mesh=None, progress: bool = False,
            source: str = "db") -> np.ndarray:
  """CSA's new scores of each query's first-round top-K, batched and sharded.

  The arguments are taken as checked (the drivers check them); only db rows read from a memmap
  are checked here, as they are read.

  Args:
    params: the model's parameters.
    cfg: the model's config; L = cfg.anchors.
    q_QxC: L2-normalised queries.
    db_NxC: L2-normalised database (array, memmap or ``StackedRows``).
    top_QxT: first-round ranking, T >= max(K, L-1).
    K: candidates scored per query.
    batch_size: queries per device call (rounded up to a multiple of the device count); None
      sizes it to the devices' free memory (``batching.auto_batch_size``).
    mesh: a ``parallel.make_mesh`` mesh; default all devices.
    progress: log the queries done every 5 s.
    source: the database's file, named in error messages.

  Returns:
    float32 new_QxK: cosine of refined candidate token j to the refined query token.
  """
  L = cfg.anchors
  top = np.asarray(top_QxT)
  nq = top.shape[0]
  need = first_round.needed(K, L)
  if mesh is None and jax.device_count() > 1:
    mesh = parallel.make_mesh()
  nd = 1 if mesh is None else mesh.shape[parallel.DATA_AXIS]
  if batch_size is None:
    devices = jax.devices()[:1] if mesh is None else mesh.devices.ravel()
    batch_size = auto_batch_size(cfg, K, np.shape(q_QxC)[1], devices)
  bs = -(-max(1, min(batch_size, nq)) // nd) * nd
  if mesh is not None:
    params = jax.device_put(params, parallel.replicated(mesh))
    put = functools.partial(jax.device_put, device=parallel.batch_sharding(mesh))
    put_all = functools.partial(jax.device_put, device=parallel.replicated(mesh))
  else:
    put = put_all = jnp.asarray
  q = np.asarray(q_QxC, np.float32)
  out = np.empty((nq, K), np.float32)
  t0 = last = time.perf_counter()
  pending = None
  for s in range(0, nq + bs, bs):  # one step past the end: fetch the last batch
    if s < nq:
      qb, tb = q[s:s + bs], top[s:s + bs, :need]
      if len(qb) < bs:  # pad the last batch with copies of its first query: one compiled shape
        qb = np.concatenate([qb, np.repeat(qb[:1], bs - len(qb), 0)])
        tb = np.concatenate([tb, np.repeat(tb[:1], bs - len(tb), 0)])
      rows, local = np.unique(tb, return_inverse=True)
      sub = _gather_rows(db_NxC, rows, bs * need, source)
      aff = _affinity(put(qb), put_all(sub),
                      put(local.reshape(tb.shape).astype(np.int32)), K, L)
      scores = rerank_scores(params, aff, cfg)  # dispatched: fetched on the next step
    if pending is not None:  # the previous batch, fetched while this one runs
      p, v = pending
      out[p:p + bs] = np.asarray(v)[:min(bs, nq - p)]
      now = time.perf_counter()
      done = min(nq, p + bs)
      if progress and (now - last > 5 or done == nq):
        last = now
        log.info("rerank: %d/%d queries, %.1f queries/s", done, nq, done / (now - t0))
    pending = (s, scores) if s < nq else None
  validate.check_scores(out, "csa_scores")
  return out


def _rerank_shortlist(who: str, q_QxC, db, top_QxT, model, K: int, batch_size, mesh,
                      progress: bool, source: str):
  """``rerank_shortlist`` with its messages naming ``who`` (the public function called)."""
  params, cfg = validate.check_model(model, who)
  L = cfg.anchors
  if K < 1:
    raise fail(who, "K", "an integer >= 1", str(K))
  need = first_round.needed(K, L)
  top = first_round.check_first_round(top_QxT, len(db), K, L, who, "top_QxT", distinct_cols=need)
  nq = top.shape[0]
  db = validate.check_database(db, who, source)
  q_QxC = validate.check_queries(q_QxC, db.shape[1], who)
  if len(q_QxC) != nq:
    raise fail(who, "q_QxC", f"one query per ranked list ({nq})", f"{len(q_QxC)}")
  new_QxK = _scores(params, cfg, q_QxC, db, top, K, batch_size, mesh, progress, source)
  return reorder_top(top, new_QxK, with_scores=True)


def rerank_shortlist(q_QxC, db, top_QxT, model, K: int, *, batch_size: int | None = None,
                     devices=None, progress: bool = False, source: str = "db"):
  """A first-round ranking with its top-K re-ordered by CSA, and their CSA scores.

  A host driver (it builds a device mesh and returns numpy): it checks its arguments
  (``retrieval.validate``: queries finite and re-normalised if needed, an in-memory db likewise,
  finite parameters; ``first_round.check_first_round``: ids in [0, N), distinct in the columns
  CSA reads, -1 only as trailing padding), batches and shards the work. Any engine's first round
  works (docs/first_round.md); only the db rows the ranking names are read.

  Args:
    q_QxC: (Q, C) queries; rows that are not unit-norm are re-normalised (with a warning).
    db: (N, C) database (jax/numpy array, memmap, ``StackedRows`` or ``first_round.MappedRows``),
      unit rows (an in-memory one is re-normalised like the queries; a memmap's rows are refused
      if not, ``MappedRows`` re-normalises them as read).
    top_QxT: first-round ranking of 0-based db ids, best first (the first L-1 are CSA's anchors,
      L the model's), T >= max(K, L-1); each row holds at least max(K, L-1) ids, distinct, before
      any -1 padding, and -1 only after its last id (FAISS's "fewer found").
    model: ``Model(params, cfg)`` or a ``(params, cfg)`` tuple (``csa_jax.load_model``).
    K: candidates re-ranked per query, >= 1.
    batch_size: queries per device call (rounded up to a multiple of the device count); None
      sizes it to the devices' free memory (8 per device on CPU).
    devices: devices to split each batch over; default all of ``jax.devices()``.
    progress: log the queries done every 5 s.
    source: the database's file, named in error messages.

  Returns:
    (ids_QxT, scores_QxK): ids_QxT is a copy of top_QxT (its dtype) with columns :K re-ordered
    by descending CSA score (stable), K.. as in the first round (-1 padding kept); scores_QxK
    float32, the CSA score (cosine of refined tokens, in [-1, 1]) of ids_QxT[:, :K].

  Raises:
    InputError: any argument that would give a wrong ranking.
  """
  mesh = None if devices is None else parallel.make_mesh(devices)
  return _rerank_shortlist("rerank_shortlist", q_QxC, db, top_QxT, model, K, batch_size, mesh,
                           progress, source)


def _search_and_rerank(who: str, q_QxC, db, model, K: int, T: int | None, batch_size,
                       search_dtype: str, block, devices, progress: bool, source: str,
                       return_first_round: bool = False):
  """``search_and_rerank`` with its messages naming ``who`` (the public function called)."""
  params, cfg = validate.check_model(model, who)
  db = validate.check_database(db, who, source)  # first: a db that is not (N, C) is one line
  n, c = db.shape
  L = cfg.anchors
  T = K if T is None else T
  if K < 1:
    raise fail(who, "K", "an integer >= 1", str(K))
  if T < K:
    raise fail(who, "T", f"T >= K = {K} (the ranking holds the re-ranked top-K)", str(T))
  if T > n:
    raise fail(source, "db", f"at least T = {T} images (the ranking's length)", f"{n} images")
  if L - 1 > n:
    raise fail(source, "db", f"at least L-1 = {L - 1} images (the model's anchors)",
               f"{n} images")
  q_QxC = validate.check_queries(q_QxC, c, who)
  mesh = None if devices is None else parallel.make_mesh(devices)
  t0 = time.perf_counter()
  first_QxT, top_QxT = top_k_search(q_QxC, db, max(T, L - 1), block, dtype=search_dtype,
                                    devices=devices, progress=progress, source=source)
  t1 = time.perf_counter()
  new_QxK = _scores(params, cfg, q_QxC, db, top_QxT, K, batch_size, mesh, progress, source)
  log.info("rerank: %d queries, %d db images: search %.2f s, CSA top-%d %.2f s", len(q_QxC),
           n, t1 - t0, K, time.perf_counter() - t1)
  first_ids = top_QxT[:, :T].astype(np.int64)
  ids, scores_QxK = reorder_top(first_ids, new_QxK, with_scores=True)  # a copy: first_ids kept
  scores = first_QxT[:, :T].astype(np.float32)
  scores[:, :K] = scores_QxK
  return (ids, scores, first_ids) if return_first_round else (ids, scores)


def search_and_rerank(q_QxC, db, model, K: int, T: int | None = None, *,
                      batch_size: int | None = None, search_dtype: str = "float32",
                      block: int | None = None, devices=None, progress: bool = False,
                      source: str = "db", return_first_round: bool = False):
  """First-round top-T search, then CSA re-ranking of the top-K: a user's retrieval, re-ranked.

  A host driver (it builds device meshes and returns numpy); no ground truth needed. Its
  arguments are checked as ``rerank_shortlist``'s (``retrieval.validate``).

  Args:
    q_QxC: (Q, C) query descriptors; rows that are not unit-norm are re-normalised (with a
      warning), NaN/inf refused.
    db: (N, C) L2-normalised database: array (re-normalised like the queries if needed),
      ``.npy`` memmap (never read whole; rows checked as they are searched and gathered) or
      ``StackedRows``.
    model: ``Model(params, cfg)`` or a ``(params, cfg)`` tuple (``csa_jax.load_model``).
    K: candidates CSA re-ranks per query, 1 <= K <= N.
    T: length of the returned ranking, K <= T <= N; default K.
    batch_size: queries per re-ranking call (rounded up to a multiple of the device count);
      None sizes it to the devices' free memory (8 per device on CPU).
    search_dtype: first-round scores, "float32" or "bfloat16" (float32 accumulation).
    block: db rows per search step (default about 64 MB).
    devices: devices to search and re-rank on; default all of ``jax.devices()``.
    progress: search and re-ranking progress through logging.
    source: the database's file, named in error messages.
    return_first_round: also return the first round's ranking (what CSA re-ordered).

  Returns:
    (ids_QxT int64, scores_QxT float32), best first. Positions :K hold the first-round top-K
    re-ordered by CSA, with their CSA scores (cosine of refined tokens, in [-1, 1]); positions
    K: hold the first round's ranks K..T-1 in its order, with their first-round scores (the dot
    product of the descriptors). The ids are exactly ``rerank_shortlist``'s of the first round.
    With ``return_first_round``, a third entry: first_QxT int64, the first round's top-T.
  """
  return _search_and_rerank("search_and_rerank", q_QxC, db, model, K, T, batch_size,
                            search_dtype, block, devices, progress, source, return_first_round)


def _deprecated(old: str, new: str) -> None:
  warnings.warn(f"csa_jax: {old} is deprecated; use {new} (see CHANGELOG.md)",
                DeprecationWarning, stacklevel=3)


def _check_l(who: str, L: int, cfg: ModelConfig) -> None:
  if L != cfg.anchors:
    raise fail(who, "L", f"{cfg.anchors} (the model's anchors)", str(L))


def csa_scores(params, cfg, q_QxC, db_NxC, top_QxT, K: int, L: int,
               batch_size: int | None = None, mesh=None, progress: bool = False,
               source: str = "db") -> np.ndarray:
  """Deprecated: use ``rerank_shortlist(q_QxC, db, top_QxT, (params, cfg), K)``, whose second
  output holds these scores in the re-ranked order.

  CSA's new scores of each query's first-round top-K, in first-round order; ``L`` must be
  ``cfg.anchors``, and the ids keep ``first_round``'s rule (a -1 or an id past the end is refused,
  never gathered as another row). The other arguments are taken as checked.

  Returns:
    float32 new_QxK.
  """
  _deprecated("csa_scores", "rerank_shortlist")
  _check_l("csa_scores", L, cfg)
  first_round.check_first_round(top_QxT, len(db_NxC), K, L, "csa_scores", "top_QxT",
                                distinct_cols=first_round.needed(K, L))
  return _scores(params, cfg, q_QxC, db_NxC, top_QxT, K, batch_size, mesh, progress, source)


def csa_rerank(params, cfg: ModelConfig, q_QxC, db_NxC, top_QxT, K: int, L: int,
               batch_size: int | None = None, mesh: Mesh | None = None) -> np.ndarray:
  """Deprecated: use ``rerank_shortlist(q_QxC, db, top_QxT, (params, cfg), K)[0]``.

  First-round ranking with its top-K re-ordered by CSA's new scores; the same checks and work
  as ``rerank_shortlist``, the anchors given again as ``L``.

  Args:
    params: the model's parameters.
    cfg: the model.
    q_QxC: (Q, C) queries; rows that are not unit-norm are re-normalised (with a warning).
    db_NxC: (N, C) database (jax/numpy array, memmap or ``StackedRows``), unit rows (an
      in-memory one is re-normalised like the queries; a memmap's rows are refused if not).
    top_QxT: first-round ranking of 0-based db ids, T >= max(K, L-1), as ``rerank_shortlist``
      takes it (-1 only as trailing padding past the first max(K, L-1) ids).
    K: candidates re-ranked per query, >= 1.
    L: anchors; must be the model's ``cfg.anchors``.
    batch_size: queries per device call (rounded up to a multiple of the device count); None
      sizes it to the devices' free memory (8 per device on CPU).
    mesh: a ``parallel.make_mesh`` mesh to split each batch over; default all devices
      (``rerank_shortlist`` takes ``devices`` instead).

  Returns:
    int new top_QxT: columns :K re-ordered, K.. as in the first round.

  Raises:
    InputError: any argument that would give a wrong ranking.
  """
  _deprecated("csa_rerank", "rerank_shortlist")
  _check_l("csa_rerank", L, cfg)
  return _rerank_shortlist("csa_rerank", q_QxC, db_NxC, top_QxT, (params, cfg), K, batch_size,
                           mesh, False, "db")[0]
