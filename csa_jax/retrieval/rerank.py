"""Re-ranking a first-round shortlist with CSA (docs/method.md section 1, steps 2-4), in batches.

The original test.py's job without its per-query loop: a batch of queries at a time, the rows of
the database it needs are gathered (from an array or a memmap: R1M is never read whole), the
affinity features and the model run on device, the batch split over the devices' data axis
(``parallel.make_mesh``).
"""

from __future__ import annotations

import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from csa_jax import parallel
from csa_jax.core.affinity import rerank_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import rerank_scores
from csa_jax.errors import fail
from csa_jax.retrieval import validate
from csa_jax.retrieval.batching import auto_batch_size

logger = logging.getLogger(__name__)


# Traced, so rerank_affinity skips its host check of the ids: csa_scores made them itself (from
# np.unique), and that check would wait for the device at every batch.
_affinity = jax.jit(rerank_affinity, static_argnames=("K", "L"))


def reorder_top(top_QxT, new_scores_QxK) -> np.ndarray:
  """The first-round ranking with its top-K re-ordered by new score (docs/method.md section 1).

  Args:
    top_QxT: first-round ranking, T >= K.
    new_scores_QxK: new scores of each row's first K entries.

  Returns:
    A copy of top_QxT whose first K columns are sorted by descending new score (stable: ties
    keep their first-round order); positions K.. untouched.
  """
  top = np.array(top_QxT)
  k = new_scores_QxK.shape[1]
  order = np.argsort(-np.asarray(new_scores_QxK), axis=1, kind="stable")
  top[:, :k] = np.take_along_axis(top[:, :k], order, axis=1)
  return top


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
  if not validate.in_memory(db_NxC):
    validate.check_gathered_rows(sub[:len(rows)], rows, source)
  return sub


def csa_scores(params, cfg, q_QxC, db_NxC, top_QxT, K: int, L: int,
               batch_size: int | None = None, mesh=None, progress: bool = False,
               source: str = "db") -> np.ndarray:
  """CSA's new scores of each query's first-round top-K, batched and sharded as ``csa_rerank``.

  The same batches, padding and device calls as ``csa_rerank``, so sorting these scores (stable,
  descending) gives exactly its ranking. The arguments are taken as checked (``csa_rerank`` and
  ``rerank`` check them); only db rows read from a memmap are checked here, as they are read.

  Args:
    params: the model's parameters.
    cfg: the model.
    q_QxC: L2-normalised queries.
    db_NxC: L2-normalised database (array, memmap or ``StackedRows``).
    top_QxT: first-round ranking, T >= max(K, L-1).
    K: candidates scored per query.
    L: anchors, the model's.
    batch_size: queries per device call (rounded up to a multiple of the device count); None
      sizes it to the devices' free memory (``batching.auto_batch_size``).
    mesh: a ``parallel.make_mesh`` mesh; default all devices.
    progress: log the queries done every 5 s.
    source: the database's file, named in error messages.

  Returns:
    float32 new_QxK: cosine of refined candidate token j to the refined query token.
  """
  top = np.asarray(top_QxT)
  nq = top.shape[0]
  need = max(K, L - 1)
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
        logger.info("rerank: %d/%d queries, %.1f queries/s", done, nq, done / (now - t0))
    pending = (s, scores) if s < nq else None
  validate.check_scores(out, "csa_scores")
  return out


def csa_rerank(params, cfg: ModelConfig, q_QxC, db_NxC, top_QxT, K: int, L: int,
               batch_size: int | None = None, mesh: Mesh | None = None) -> np.ndarray:
  """First-round ranking with its top-K re-ordered by CSA's new scores.

  A host driver: it checks its arguments (``retrieval.validate``: queries finite and
  re-normalised if needed, an in-memory db likewise, ids in [0, N) and distinct, finite
  parameters), batches and shards the work, and returns numpy.

  Args:
    params: the model's parameters.
    cfg: the model.
    q_QxC: (Q, C) queries; rows that are not unit-norm are re-normalised (with a warning).
    db_NxC: (N, C) database (jax/numpy array, memmap or ``StackedRows``), unit rows (an
      in-memory one is re-normalised like the queries; a memmap's rows are refused if not).
    top_QxT: first-round ranking of 0-based db ids, T >= max(K, L-1), distinct in those columns.
    K: candidates re-ranked per query, >= 1.
    L: anchors; must be the model's ``cfg.anchors``.
    batch_size: queries per device call (rounded up to a multiple of the device count); None
      sizes it to the devices' free memory (8 per device on CPU).
    mesh: a ``parallel.make_mesh`` mesh to split each batch over; default all devices.

  Returns:
    int new top_QxT: columns :K re-ordered, K.. as in the first round.

  Raises:
    InputError: any argument that would give a wrong ranking.
  """
  if L != cfg.anchors:
    raise fail("csa_rerank", "L", f"{cfg.anchors} (the model's anchors)", str(L))
  if K < 1:
    raise fail("csa_rerank", "K", "an integer >= 1", str(K))
  need = max(K, L - 1)
  top = validate.check_ranking(top_QxT, len(db_NxC), need, "csa_rerank")
  nq, t = top.shape
  if need > t:
    raise fail("csa_rerank", "top_QxT", f"at least max(K, L-1) = {need} ranked images per query "
               f"(K={K}, L={L})", f"{t}")
  db_NxC = validate.check_database(db_NxC, "csa_rerank")
  q_QxC = validate.check_queries(q_QxC, db_NxC.shape[1], "csa_rerank")
  if len(q_QxC) != nq:
    raise fail("csa_rerank", "q_QxC", f"one query per ranked list ({nq})", f"{len(q_QxC)}")
  validate.check_params(params, "csa_rerank")
  new_QxK = csa_scores(params, cfg, q_QxC, db_NxC, top, K, L, batch_size, mesh)
  return reorder_top(top, new_QxK)
