"""Re-ranking a first-round shortlist with CSA (docs/method.md section 1, steps 2-4), batched over queries.

The original test.py's job without its per-query loop: a batch of queries at a time, the rows of
the database it needs are gathered (from an array or a memmap: R1M is never read whole), the
affinity features and the model run on device, the batch split over the devices' ``'data'``
axis. A re-ranker is any ``(q_QxC, db_NxC, top_QxT) -> new top_QxT``; ``csa_reranker`` builds
CSA's, and query-expansion baselines share the shape.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from csa_jax.core.affinity import rerank_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import rerank_scores

Reranker = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def reorder_top(top_QxT, new_scores_QxK) -> np.ndarray:
  """The top-K of each row re-ordered by new score, descending (stable); positions K.. untouched."""
  top = np.array(top_QxT)
  k = new_scores_QxK.shape[1]
  order = np.argsort(-np.asarray(new_scores_QxK), axis=1, kind="stable")
  top[:, :k] = np.take_along_axis(top[:, :k], order, axis=1)
  return top


def default_mesh() -> Mesh | None:
  """A 1-D ``'data'`` mesh over every device, or None when there is only one."""
  devices = jax.devices()
  return Mesh(np.asarray(devices), ("data",)) if len(devices) > 1 else None


def _gather_rows(db_NxC, rows: np.ndarray, total: int):
  """db rows ``rows`` (sorted, unique) padded with zero rows to ``total``: one shape per batch."""
  if isinstance(db_NxC, jax.Array):
    sub = jnp.take(db_NxC, jnp.asarray(rows), axis=0)
    return jnp.pad(sub, ((0, total - len(rows)), (0, 0)))
  sub = np.zeros((total, db_NxC.shape[1]), np.float32)
  sub[:len(rows)] = db_NxC[rows]  # a memmap reads only these rows
  return sub


def csa_rerank(params, cfg: ModelConfig, q_QxC, db_NxC, top_QxT, K: int, L: int,
               batch_size: int = 8, mesh: Mesh | None = None) -> np.ndarray:
  """First-round ranking with its top-K re-ordered by CSA's new scores: int (Q, T).

  q_QxC: L2-normalised queries; db_NxC: L2-normalised database (jax/numpy array or memmap);
  top_QxT: first-round ranking, T >= max(K, L-1). L must be the model's ``cfg.anchors``.
  batch_size: queries per device call (rounded up to a multiple of the device count).
  mesh: a mesh with a ``'data'`` axis to split each batch over; default all devices.
  """
  top = np.asarray(top_QxT)
  nq, t = top.shape
  if L != cfg.anchors:
    raise ValueError(f"csa_rerank: L={L} but the model was built for {cfg.anchors} anchors")
  need = max(K, L - 1)
  if K < 1 or need > t:
    raise ValueError(f"csa_rerank: K={K}, L={L} need {need} ranked images per query; top "
                     f"has {t}")
  if len(q_QxC) != nq:
    raise ValueError(f"csa_rerank: {len(q_QxC)} queries but {nq} ranked lists")
  mesh = default_mesh() if mesh is None else mesh
  nd = 1 if mesh is None else mesh.shape["data"]
  bs = -(-max(1, min(batch_size, nq)) // nd) * nd
  if mesh is not None:
    split = NamedSharding(mesh, P("data"))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    put = functools.partial(jax.device_put, device=split)
    put_all = functools.partial(jax.device_put, device=NamedSharding(mesh, P()))
  else:
    put = put_all = jnp.asarray

  q = np.asarray(q_QxC, np.float32)
  scores = []
  for s in range(0, nq, bs):
    qb, tb = q[s:s + bs], top[s:s + bs, :need]
    if len(qb) < bs:  # pad the last batch with copies of its first query: one compiled shape
      qb = np.concatenate([qb, np.repeat(qb[:1], bs - len(qb), 0)])
      tb = np.concatenate([tb, np.repeat(tb[:1], bs - len(tb), 0)])
    rows, local = np.unique(tb, return_inverse=True)
    sub = _gather_rows(db_NxC, rows, bs * need)
    aff = rerank_affinity(put(qb), put_all(sub), put(local.reshape(tb.shape).astype(np.int32)),
                          K, L)
    scores.append((s, rerank_scores(params, aff, cfg)))  # dispatched; fetched below
  new = np.concatenate([np.asarray(v)[:min(bs, nq - s)] for s, v in scores])
  return reorder_top(top, new)


def csa_reranker(params, cfg: ModelConfig, K: int, L: int | None = None, batch_size: int = 8,
                 mesh: Mesh | None = None) -> Reranker:
  """CSA as a ``(q_QxC, db_NxC, top_QxT) -> new top_QxT`` re-ranker."""
  L = cfg.anchors if L is None else L
  return lambda q, db, top: csa_rerank(params, cfg, q, db, top, K, L, batch_size, mesh)
