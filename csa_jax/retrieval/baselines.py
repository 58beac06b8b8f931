"""The classic re-ranking baselines CSA is compared with: AQE, alpha-QE and alpha-DBA.

All three take what CSA re-ranking takes, the first-round descriptors and ranking, and return a new
ranking of the same length: ``(q_QxC, db_NxC, top_QxT) -> new top_QxT``. Descriptors are
L2-normalised, so dot products are cosines; every result is sorted by descending score, ties by
lower database index (a stable sort's order).

Definitions (Chum et al. ICCV 2007; Radenovic et al. TPAMI 2018; Gordo et al. IJCV 2017), written
with s = the cosine similarity to the vector being expanded:

- AQE (k): q' = normalise(q + sum_{i<k} db[top_i]), the query and its first-round top-k with
  weight 1 each (the mean, up to the normalisation); then q' searches the whole database.
- alpha-QE (k, alpha): q' = normalise(q + sum_{i<k} max(s_i, 0)^alpha db[top_i]). The query
  enters with its own weight 1^alpha = 1, as in Radenovic's implementation. Negative similarities
  are clipped to weight 0 (a real power of a negative number is undefined). alpha = 0 is AQE.
- alpha-DBA (k, alpha): every database vector is replaced by
  normalise(db_j + sum_{i<k} max(s_ji, 0)^alpha db[n_ji]), where n_j0.. are db_j's top-k *other*
  database vectors (itself excluded, then added with weight 1 like the query in alpha-QE, also
  when an exact duplicate exists). Queries are unchanged; they search the augmented database.
  k = 0 leaves every method the identity of a plain search.

So k counts the neighbours added to the vector itself, for all three methods. The searches are
exact: queries go through ``csa_jax.retrieval.search.top_k_search``; DBA's database-side
neighbours are found in blocks of rows so that a block's score matrix stays under
``_BLOCK_BYTES`` on device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from csa_jax.core.normalize import l2_normalize
from csa_jax.retrieval.search import top_k_search

F32 = jnp.float32
_BLOCK_BYTES = 1 << 28  # float32 scores per block of rows: at most 256 MiB on device


def _dot(a, b, spec):
  return jnp.einsum(spec, a, b, precision="highest", preferred_element_type=F32)


def _block_rows(n_db: int, extra: int = 0) -> int:
  """Rows per block: their (rows, N + extra) float32 values fit in ``_BLOCK_BYTES``."""
  return int(max(1, min(4096, _BLOCK_BYTES // (4 * max(n_db + extra, 1)))))


def _row_blocks(x_RxC, block):
  """x padded to whole blocks: ((nb,) block starts, (nb, block, C) rows)."""
  r, c = x_RxC.shape
  nb = -(-r // block)
  xb = jnp.pad(x_RxC, ((0, nb * block - r), (0, 0))).reshape(nb, block, c)
  return jnp.arange(nb) * block, xb


def _top_of_block(start, xq_BxC, db_NxC, t, exclude_self):
  s = _dot(xq_BxC, db_NxC, "bc,nc->bn")
  if exclude_self:
    # Row b of this block is db row start + b; padded rows fall outside and the scatter drops
    # them.
    b = xq_BxC.shape[0]
    s = s.at[jnp.arange(b), start + jnp.arange(b)].set(-jnp.inf, mode="drop")
  return jax.lax.top_k(s, t)


def search(q_QxC, db_NxC, T: int):
  """Exact first-round search: int32 (Q, T) database indices by descending cosine."""
  _check(q_QxC, db_NxC, T, 0, "search")
  return top_k_search(q_QxC, db_NxC, T)[1]


def _weights(s, alpha):
  """max(s, 0)^alpha; alpha None means weight 1 (AQE)."""
  if alpha is None:
    return jnp.ones_like(s)
  return jnp.power(jnp.maximum(s, 0.0), alpha)


@functools.partial(jax.jit, static_argnames=("k", "use_alpha"))
def _expand(q_QxC, db_NxC, top_QxT, alpha, k, use_alpha):
  nb_QxKxC = db_NxC[top_QxT[:, :k]]
  s_QxK = _dot(q_QxC, nb_QxKxC, "qc,qkc->qk")
  w_QxK = _weights(s_QxK, alpha if use_alpha else None)
  return l2_normalize(q_QxC + _dot(w_QxK, nb_QxKxC, "qk,qkc->qc"))


def expand_queries(q_QxC, db_NxC, top_QxT, k: int, alpha: float | None = None):
  """The expanded queries q' (Q, C), L2-normalised: AQE when alpha is None, else alpha-QE.

  Args:
    q_QxC: (Q, C) L2-normalised queries.
    db_NxC: (N, C) L2-normalised database.
    top_QxT: int (Q, T) first-round ranking, queries first; its first k entries are used
      (T >= k).
    k: neighbours added to each query (0: the query itself).
    alpha: None for AQE (weight 1), else alpha-QE's exponent of max(similarity, 0).

  Returns:
    float32 (Q, C) expanded queries, to search the database with.
  """
  _check(q_QxC, db_NxC, top_QxT.shape[1], k, "expand_queries", need=k)
  if top_QxT.shape[0] != q_QxC.shape[0]:
    raise ValueError(f"expand_queries: {q_QxC.shape[0]} queries but {top_QxT.shape[0]} "
                     "ranked lists")
  if k == 0:
    return l2_normalize(jnp.asarray(q_QxC, F32))
  return _expand(q_QxC, db_NxC, top_QxT, F32(0.0 if alpha is None else alpha), k,
                 alpha is not None)


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _augment(db_NxC, alpha, k, block):
  # Block by block, so that neither the (N, N) scores nor the (N, k, C) neighbours exist whole.
  def one(a):
    start, xb_BxC = a
    s_BxK, nn_BxK = _top_of_block(start, xb_BxC, db_NxC, k, True)
    w_BxK = _weights(s_BxK, alpha)
    return l2_normalize(xb_BxC + _dot(w_BxK, db_NxC[nn_BxK], "bk,bkc->bc"))

  n, c = db_NxC.shape
  return jax.lax.map(one, _row_blocks(db_NxC, block)).reshape(-1, c)[:n]


def augment_database(db_NxC, k: int, alpha: float = 3.0):
  """alpha-DBA's database: each vector plus its top-k other database vectors, weighted.

  Args:
    db_NxC: (N, C) L2-normalised database.
    k: neighbours added to each vector, in [0, N-1] (itself excluded; 0: unchanged).
    alpha: exponent of the weight max(similarity, 0)^alpha (0: plain average, Chum/Gordo's
      uniform DBA).

  Returns:
    float32 (N, C) augmented database, L2-normalised.
  """
  n = db_NxC.shape[0]
  if not 0 <= k < n:
    raise ValueError(f"augment_database: k={k} must be in [0, N-1={n - 1}]")
  if k == 0:
    return l2_normalize(jnp.asarray(db_NxC, F32))
  return _augment(db_NxC, F32(alpha), k, _block_rows(n, k * db_NxC.shape[1]))


# -- the re-ranking interface --------------------------------------------------------------------


def aqe(q_QxC, db_NxC, top_QxT, k: int = 2):
  """Average query expansion: new ranking (Q, T) of the whole database for normalise(q + top-k)."""
  q2 = expand_queries(q_QxC, db_NxC, top_QxT, k, None)
  return search(q2, db_NxC, top_QxT.shape[1])


def alpha_qe(q_QxC, db_NxC, top_QxT, k: int = 2, alpha: float = 3.0):
  """alpha-QE: new ranking (Q, T) for normalise(q + sum_i sim_i^alpha top_i)."""
  q2 = expand_queries(q_QxC, db_NxC, top_QxT, k, alpha)
  return search(q2, db_NxC, top_QxT.shape[1])


def alpha_dba(q_QxC, db_NxC, top_QxT, k: int = 2, alpha: float = 3.0, return_db: bool = False):
  """alpha-DBA: the original queries search the augmented database; new ranking (Q, T).

  ``top_QxT`` only fixes T (the database is re-searched). With ``return_db`` also returns the
  augmented database, so another re-ranker (CSA, alpha-QE) can run on top of it.
  """
  db2 = augment_database(db_NxC, k, alpha)
  top = search(q_QxC, db2, top_QxT.shape[1])
  return (top, db2) if return_db else top


def _check(q_QxC, db_NxC, t: int, k: int, what: str, need: int = 0):
  if q_QxC.ndim != 2 or db_NxC.ndim != 2 or q_QxC.shape[1] != db_NxC.shape[1]:
    raise ValueError(f"{what}: queries {q_QxC.shape} and database {db_NxC.shape} must be (Q, C) "
                     "and (N, C) with the same C")
  if k < 0 or need > t:
    raise ValueError(f"{what}: k={k} must be in [0, T={t}] (columns of the first-round ranking)")
  if not 1 <= t <= db_NxC.shape[0]:
    raise ValueError(f"{what}: T={t} must be in [1, N={db_NxC.shape[0]}]")
