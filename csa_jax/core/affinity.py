"""Affinity features: similarities of tokens to anchors, on device (docs/method.md sections 1-2).

Only these similarities enter the model, never the descriptors, so one trained re-ranker serves
any descriptor. Both builders are one gather plus one batched matmul, jitted with K and L static.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from csa_jax.errors import InputError


def _check_sizes(what: str, k: int, l: int, available: int, need_k: int, need_l: int):
  if k < 1 or l < 1:
    raise ValueError(f"{what}: K and L must be >= 1, got K={k}, L={l}")
  if need_k > available or need_l > available:
    raise ValueError(
        f"{what}: K={k} and L={l} need {max(need_k, need_l)} neighbours per query, but only "
        f"{available} are available (columns of the neighbour/top list)")


@functools.partial(jax.jit, static_argnames=("k", "l"))
def _rerank_affinity(q_QxC, db_NxC, top_QxT, k, l):
  tokens = jnp.concatenate([q_QxC[:, None], db_NxC[top_QxT[:, :k]]], axis=1)  # (Q, K+1, C)
  anchors = tokens[:, :l] if l <= k + 1 else jnp.concatenate(
      [q_QxC[:, None], db_NxC[top_QxT[:, :l - 1]]], axis=1)  # (Q, L, C)
  return jnp.einsum("qkc,qlc->qkl", tokens, anchors, precision="highest",
                    preferred_element_type=jnp.float32)


def rerank_affinity(q_QxC, db_NxC, top_QxT, K: int, L: int) -> jax.Array:
  """Test-time affinity features (docs/method.md section 1).

  tokens = [query, db[top[:, :K]]], anchors = [query, db[top[:, :L-1]]], affinity = tokens @
  anchors^T.

  Contract on the ids: every id in the first max(K, L-1) columns must lie in [0, N). Concrete
  ids (numpy or jax arrays outside a trace) are checked here and refused otherwise; traced ids
  (inside the caller's jit) cannot be, and an id outside [0, N) there is clamped to a real row
  by the gather, silently giving a wrong affinity: check them before tracing.

  Args:
    q_QxC: L2-normalised queries.
    db_NxC: L2-normalised database.
    top_QxT: first-round ranking (int, descending score), T >= K and T >= L-1.
    K: candidates re-ranked per query.
    L: anchors.

  Returns:
    float32 aff_Qx(K+1)xL; row 0 is the query.
  """
  q, t = top_QxT.shape
  if q_QxC.shape[0] != q:
    raise ValueError(f"rerank_affinity: {q_QxC.shape[0]} queries but {q} ranked lists")
  _check_sizes("rerank_affinity", K, L, t, K, L - 1)
  n = db_NxC.shape[0]
  if K > n or L - 1 > n:
    raise ValueError(f"rerank_affinity: K={K}, L={L} exceed the database size {n}")
  if not isinstance(top_QxT, jax.core.Tracer):
    used = top_QxT[:, :max(K, L - 1)]
    lo, hi = int(used.min()), int(used.max())  # one small fetch for a device array
    if lo < 0 or hi >= n:
      raise InputError(f"rerank_affinity: top_QxT: expected db ids in [0, N={n}), found "
                       f"{lo if lo < 0 else hi}")
  return _rerank_affinity(q_QxC, db_NxC, top_QxT, K, L)


@functools.partial(jax.jit, static_argnames=("k", "l"))
def _training_affinity(feats_NxC, nbrs_NxM, clusters_N, idx_B, k, l):
  nb = nbrs_NxM[idx_B]  # (B, M)
  tokens, anchors = nb[:, :k], nb[:, :l]
  aff = jnp.einsum("bkc,blc->bkl", feats_NxC[tokens], feats_NxC[anchors], precision="highest",
                   preferred_element_type=jnp.float32)
  targets = (clusters_N[tokens] == clusters_N[idx_B][:, None]).astype(jnp.float32)
  # Token 0 is the query itself (its own first neighbour); its target is 1 by definition, also
  # when a duplicate image displaced it from position 0.
  return aff, targets.at[:, 0].set(1.0)


def training_affinity(feats_NxC, nbrs_NxM, clusters_N, idx_B, K: int, L: int):
  """Training samples (docs/method.md section 2): tokens nbrs[i, :K], anchors nbrs[i, :L].

  Args:
    feats_NxC: L2-normalised descriptors.
    nbrs_NxM: each image's neighbours by descending similarity, nbrs[i, 0] = i, M >= max(K, L).
    clusters_N: int cluster ids.
    idx_B: the batch's query indices.
    K: tokens per sample.
    L: anchors per sample.

  Returns:
    (aff_BxKxL float32, targets_BxK float32); targets[:, j] = 1 iff token j shares the query's
    cluster, and token 0 (the query) is always 1.
  """
  _check_sizes("training_affinity", K, L, nbrs_NxM.shape[1], K, L)
  if nbrs_NxM.shape[0] != feats_NxC.shape[0] or clusters_N.shape[0] != feats_NxC.shape[0]:
    raise ValueError(f"training_affinity: feats ({feats_NxC.shape[0]}), nbrs "
                     f"({nbrs_NxM.shape[0]}) and clusters ({clusters_N.shape[0]}) must have one "
                     "row per image")
  return _training_affinity(feats_NxC, nbrs_NxM, clusters_N, idx_B, K, L)
