"""Re-ordering a ranking's top-K by new scores, and where each entry stood before.

``reorder_top`` is the one place a top-K is re-ordered in csa_jax (the host drivers,
``csa-jax smoke``), so ties are broken the same way everywhere; ``first_round_ranks`` undoes it
for the record (``csa-jax rerank``'s ``first_round_rank``).
"""

from __future__ import annotations

import numpy as np


def reorder_top(top_QxT, new_scores_QxK, *, with_scores: bool = False):
  """The first-round ranking with its top-K re-ordered by new score (docs/method.md section 1).

  Every re-ordering of a top-K in csa_jax is this one (the drivers, ``csa-jax smoke``), so ties
  are broken the same way everywhere.

  Args:
    top_QxT: first-round ranking, T >= K (numpy or jax).
    new_scores_QxK: new scores of each row's first K entries.
    with_scores: also return the new scores in the new order.

  Returns:
    A numpy copy of top_QxT whose first K columns are sorted by descending new score (stable:
    ties keep their first-round order), positions K.. untouched; with ``with_scores``,
    ``(that, scores_QxK)`` with scores_QxK[i, j] the new score of the returned [i, j].
  """
  top = np.array(top_QxT)
  new = np.asarray(new_scores_QxK)
  k = new.shape[1]
  order = np.argsort(-new, axis=1, kind="stable")
  top[:, :k] = np.take_along_axis(top[:, :k], order, axis=1)
  return (top, np.take_along_axis(new, order, axis=1)) if with_scores else top


def first_round_ranks(ids_QxT, first_QxT, K: int) -> np.ndarray:
  """Where each entry of a re-ranked list stood in the first round (what CSA moved).

  Args:
    ids_QxT: the re-ranked list, ``reorder_top(first_QxT, ...)``: its first K columns a
      permutation of first_QxT's (distinct ids), the rest as in the first round.
    first_QxT: the first-round ranking.
    K: the columns re-ordered.

  Returns:
    int64 (Q, T), 1-based: entry [i, j] is the first-round rank of ids_QxT[i, j] (j + 1 from
    column K on, where nothing moved).
  """
  ids, first = np.asarray(ids_QxT), np.asarray(first_QxT)
  if ids.shape != first.shape or not 0 <= K <= ids.shape[1]:
    raise ValueError(f"first_round_ranks: expected two (Q, T) rankings and K <= T, found "
                     f"{ids.shape}, {first.shape}, K={K}")
  ranks = np.broadcast_to(np.arange(1, ids.shape[1] + 1, dtype=np.int64), ids.shape).copy()
  # Both top-Ks sorted by id line up entry for entry: the m-th smallest id sits at by_id_first[m]
  # in the first round and at by_id_new[m] in the re-ranked list.
  by_id_first = np.argsort(first[:, :K], axis=1, kind="stable")
  by_id_new = np.argsort(ids[:, :K], axis=1, kind="stable")
  same = (np.take_along_axis(first[:, :K], by_id_first, axis=1)
          == np.take_along_axis(ids[:, :K], by_id_new, axis=1)).all(axis=1)
  if not same.all():
    raise ValueError(f"first_round_ranks: row {int(np.argmin(same))}'s first {K} ids are not a "
                     "re-ordering of the first round's")
  np.put_along_axis(ranks[:, :K], by_id_new, by_id_first + 1, axis=1)
  return ranks
