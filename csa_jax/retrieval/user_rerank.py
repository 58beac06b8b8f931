"""CSA re-ranking of a user's own queries against their own database, no ground truth needed.

What ``csa-jax rerank`` runs: first-round top-T search over the database (blocked, on device, a
memmap never read whole), then CSA re-ordering of each query's top-K (docs/method.md section 1),
batched and sharded over the devices like ``csa_rerank``. ``rerank`` also returns the scores
the ranking is sorted by, which ``csa_rerank`` does not; ``load_database`` / ``load_queries`` /
``load_names`` (from ``data.index_lists``) read the user's files with the checks of ``data.descriptors``.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from csa_jax import parallel
from csa_jax.data import descriptors
from csa_jax.data.index_lists import load_names  # noqa: F401  (public here too)
from csa_jax.errors import fail
from csa_jax.formats import containers
from csa_jax.retrieval import validate
from csa_jax.retrieval.rerank import csa_scores
from csa_jax.retrieval.search import top_k_search

logger = logging.getLogger(__name__)

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
  return descriptors.load_large(path, field="db", key="db")


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
  """First-round top-T search, then CSA re-ranking of the top-K: a user's retrieval, re-ranked.

  A host driver: its arguments are checked as ``csa_rerank``'s (``retrieval.validate``).

  Args:
    q_QxC: (Q, C) query descriptors; rows that are not unit-norm are re-normalised (with a
      warning), NaN/inf refused.
    db: (N, C) L2-normalised database: array (re-normalised like the queries if needed),
      ``.npy`` memmap (never read whole; rows checked as they are searched and gathered) or
      ``StackedRows``.
    model: ``(params, cfg)`` (``csa_jax.load_model``).
    K: candidates CSA re-ranks per query, 1 <= K <= N.
    T: length of the returned ranking, K <= T <= N; default K.
    L: anchors; None takes the model's (any other value is refused).
    batch_size: queries per re-ranking call (rounded up to a multiple of the device count);
      None sizes it to the devices' free memory (8 per device on CPU).
    search_dtype: first-round scores, "float32" or "bfloat16" (float32 accumulation).
    block: db rows per search step (default about 64 MB).
    devices: devices to search and re-rank on; default all of ``jax.devices()``.
    progress: search and re-ranking progress through logging.
    source: the database's file, named in error messages.

  Returns:
    (ids_QxT int64, scores_QxT float32), best first. Positions :K hold the first-round top-K
    re-ordered by CSA, with their CSA scores (cosine of refined tokens, in [-1, 1]); positions
    K: hold the first round's ranks K..T-1 in its order, with their first-round scores (the dot
    product of the descriptors). The first K ids are exactly ``csa_rerank``'s.
  """
  params, cfg = model
  n, c = db.shape
  L = cfg.anchors if L is None else L
  T = K if T is None else T
  if L != cfg.anchors:
    raise fail("rerank", "L", f"{cfg.anchors} (the model's anchors)", str(L))
  if K < 1:
    raise fail("rerank", "K", "an integer >= 1", str(K))
  if T < K:
    raise fail("rerank", "T", f"T >= K = {K} (the ranking holds the re-ranked top-K)", str(T))
  if T > n:
    raise fail(source, "db", f"at least T = {T} images (the ranking's length)", f"{n} images")
  if L - 1 > n:
    raise fail(source, "db", f"at least L-1 = {L - 1} images (the model's anchors)",
               f"{n} images")
  db = validate.check_database(db, "rerank", source)
  q_QxC = validate.check_queries(q_QxC, c, "rerank")
  validate.check_params(params, "rerank")
  mesh = None if devices is None else parallel.make_mesh(devices)
  t0 = time.perf_counter()
  first_QxT, top_QxT = top_k_search(q_QxC, db, max(T, L - 1), block, dtype=search_dtype,
                                    devices=devices, progress=progress, source=source)
  t1 = time.perf_counter()
  new_QxK = csa_scores(params, cfg, q_QxC, db, top_QxT, K, L, batch_size, mesh, progress,
                       source)
  logger.info("rerank: %d queries, %d db images: search %.2f s, CSA top-%d %.2f s", len(q_QxC),
              n, t1 - t0, K, time.perf_counter() - t1)
  order = np.argsort(-new_QxK, axis=1, kind="stable")  # as reorder_top: ties keep first-round
  ids = top_QxT[:, :T].astype(np.int64)
  scores = first_QxT[:, :T].astype(np.float32)
  ids[:, :K] = np.take_along_axis(ids[:, :K], order, 1)
  scores[:, :K] = np.take_along_axis(new_QxK, order, 1)
  return ids, scores

