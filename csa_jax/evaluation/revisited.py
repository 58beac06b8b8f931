"""Revisited Oxford/Paris evaluation (Radenovic et al., CVPR 2018), exact and fast.

docs/method.md section 7 defines the protocol; two entry points give the reference tools' numbers:

- ``revisited_map(ranks_QxT, gnd)``: from rankings, queries first (row q holds db indices in
  ranked order, possibly truncated to T columns), as ``top_k_search`` returns them.
- ``revisited_map_from_scores(scores_QxN, gnd, top_QxK=None)``: from scores over the whole db (and
  optionally a re-ordered top-K placed first), identical to a full stable argsort of the scores
  but without sorting the db: only where positives and ignored images land matters, and the rank
  of an image is the number of images placed above it.

Both reduce each query to sparse "hits" (positions of positives and of ignored images in the
ranking); the metrics are then a few vectorised passes over the hits. ``percent`` is the one
rounding rule for every table and JSON. Never imports torch.
"""

from __future__ import annotations

import numpy as np

from csa_jax.errors import fail
from csa_jax.evaluation.hits import EASY, HARD, JUNK, PROTOCOL_BITS, from_hits, gnd_lists

KAPPAS = (1, 5, 10)
PROTOCOLS = tuple(PROTOCOL_BITS)  # ("easy", "medium", "hard"): the one list
# Entries of the (queries x db) label table built at once by the ranks path.
_TABLE_ENTRIES = 1 << 24


def revisited_map(ranks_QxT, gnd, kappas=KAPPAS) -> dict:
  """The revisited protocol's numbers from rankings, exactly as the reference ``compute_map``.

  The reference tools take rankings transposed, (T, Q); csa_jax keeps queries first everywhere.

  Args:
    ranks_QxT: int (Q, T); row q lists 0-based db indices in ranked order, possibly truncated
      (positives missing from it add nothing to AP, so a truncated ranking under-reports mAP;
      ``revisited_map_from_scores`` is exact).
    gnd: Q dicts with 'easy', 'hard' and (optionally) 'junk' index lists.
    kappas: the k of mP@k.

  Returns:
    {'easy'|'medium'|'hard': {'map': float, 'aps': (Q,), 'mp': (len(kappas),),
    'prs': (Q, len(kappas))}} as fractions in [0, 1]; a query without positives is NaN and left
    out of the means. A query whose positives are all missing from a truncated ranking has AP 0
    and P@k 0 (the reference would crash on it).

  Raises:
    InputError: ranks_QxT is not 2-D with one row per gnd query, or not integer.
  """
  ranks = np.asarray(ranks_QxT)
  if ranks.ndim != 2 or ranks.shape[0] != len(gnd):
    raise fail("revisited_map", "ranks_QxT", f"(Q={len(gnd)}, T) rankings, queries first (one "
               "row per gnd query; transpose a (T, Q) array)", f"shape {ranks.shape}")
  if ranks.size and not np.issubdtype(ranks.dtype, np.integer):
    raise fail("revisited_map", "ranks_QxT", "integer db indices", str(ranks.dtype))
  lists = gnd_lists(gnd)
  nq, t = ranks.shape
  ranks = ranks.astype(np.int64, copy=False)
  every = [ranks.ravel()] + [a for x in lists for a in x]
  lo = min(int(a.min(initial=0)) for a in every)
  size = max(int(a.max(initial=0)) for a in every) - lo + 1

  # Label every ranked position with the bits of the lists its image is in, a chunk of queries at
  # a time through a (chunk x db) table: one gather instead of a set test per query and list.
  labels_QxT = np.zeros((nq, t), np.uint8)
  chunk = max(1, _TABLE_ENTRIES // size)
  for q0 in range(0, nq, chunk):
    qs = slice(q0, min(nq, q0 + chunk))
    table = np.zeros((qs.stop - q0, size), np.uint8)
    for row, q in enumerate(range(q0, qs.stop)):
      for bit, idx in zip((EASY, HARD, JUNK), lists[q]):
        table[row, idx - lo] |= bit
    labels_QxT[qs] = np.take_along_axis(table, ranks[qs] - lo, axis=1)
  hits = {b: np.nonzero(labels_QxT & b) for b in (EASY, HARD, JUNK)}
  return from_hits(hits, lists, kappas)


def _stable_desc_before(vals_M, idx_M, t_R, tidx_R) -> np.ndarray:
  """For each probe r: #{m : vals[m] > t[r] or (vals[m] == t[r] and idx[m] < tidx[r])}.

  The number of the M items a stable descending sort places above probe r (sorts M items only).
  """
  m = len(vals_M)
  order = np.lexsort((idx_M, vals_M))  # ascending value, then index
  v, ix = vals_M[order], idx_M[order].astype(np.int64)
  above = m - np.searchsorted(v, t_R, side="right")
  # Among items equal to the probe, count lower indices: within a run of equal values the
  # indices ascend, so (start of run, index) is one sorted key.
  start = np.searchsorted(v, v, side="left").astype(np.int64)
  span = int(max(ix.max(initial=0), tidx_R.max(initial=0))) + 1
  key = start * span + ix
  left = np.searchsorted(v, t_R, side="left").astype(np.int64)
  tie_lower = np.searchsorted(key, left * span + tidx_R, side="left") - left
  tie_lower = np.where(np.searchsorted(v, t_R, side="right") > left, tie_lower, 0)
  return above + tie_lower


def _rank_in_scores(s_N: np.ndarray, rel_R: np.ndarray, cells: int) -> np.ndarray:
  """0-based rank of db items rel_R in the stable descending order of s_N, without sorting s_N.

  Images scoring above the highest relevant score or below the lowest cannot tie with one, so a
  histogram over a fine grid of the scores counts them; only images in grid cells that hold a
  relevant score are compared one by one. The cell map only needs to be monotone in the score,
  so rounding never makes the count inexact.
  """
  t = s_N[rel_R]
  lo, hi = float(t.min()), float(t.max())
  span = hi - lo
  if span <= 0:  # one relevant score: a grid as fine as the scores' own spread
    span = float(s_N.max()) - float(s_N.min())
  scale = min(cells / span, 1e300) if span > 0 else 1.0
  # float32 scores stay float32 unless the scale could overflow it.
  dtype = np.float32 if s_N.dtype == np.float32 and scale < 1e30 else np.float64

  def cell(x):  # monotone in x, in [0, cells + 2]; the same operations for scores and probes
    w = np.subtract(x, lo, dtype=dtype)
    w *= scale
    w += 1
    np.clip(w, 0, cells + 2, out=w)
    return w.astype(np.int32)

  c_N, c_R = cell(s_N), cell(t)
  marked = np.zeros(cells + 3, bool)
  marked[c_R] = True
  hist = np.bincount(c_N, minlength=cells + 3)
  hist[marked] = 0
  # above_cell[c]: unmarked images in cells above c, i.e. scoring strictly above any score in c.
  above_cell = np.concatenate([np.cumsum(hist[::-1])[::-1][1:], [0]])
  near = np.flatnonzero(marked[c_N])
  return above_cell[c_R] + _stable_desc_before(s_N[near], near, t, rel_R)


def revisited_map_from_scores(scores_QxN, gnd, top_QxK=None, kappas=KAPPAS,
                              cells: int | None = None) -> dict:
  """``revisited_map`` of the ranking the scores imply, exact over the whole db, without sorting it.

  Equal to ``revisited_map(stable_argsort(-scores_QxN), gnd)`` (top_QxK spliced in front).

  Args:
    scores_QxN: (Q, N) first-round scores (any float dtype; higher is better). The ranking is a
      stable descending sort: equal scores keep the lower db index first.
    gnd: Q dicts with 'easy', 'hard' and (optionally) 'junk' index lists.
    top_QxK: optional int (Q, K) of distinct db indices placed first in the given order (e.g. the
      first-round top-K re-ordered by a re-ranker); the other images follow by score.
    kappas: the k of mP@k.
    cells: histogram cells of the rank count (tests only; the default is always exact).

  Returns:
    The dict of ``revisited_map``.
  """
  s_all = np.asarray(scores_QxN)
  if s_all.dtype.kind != "f" or s_all.dtype.itemsize < 4:
    s_all = s_all.astype(np.float32)  # bfloat16/float16 widen exactly: same order and ties
  if s_all.ndim != 2 or s_all.shape[0] != len(gnd):
    raise ValueError(f"scores: expected (Q={len(gnd)}, N), found shape {s_all.shape}")
  nq, n = s_all.shape
  top = None if top_QxK is None else np.asarray(top_QxK).astype(np.int64)
  if top is not None:
    if top.ndim != 2 or top.shape[0] != nq or top.shape[1] > n:
      raise ValueError(f"top_QxK: expected (Q={nq}, K<={n}), found shape {top.shape}")
    srt = np.sort(top, axis=1)
    if top.size and (srt[:, 0].min() < 0 or srt[:, -1].max() >= n
                     or (srt[:, 1:] == srt[:, :-1]).any()):
      raise ValueError(f"top_QxK: expected distinct db indices in [0, {n}) per row")
  lists = gnd_lists(gnd)
  hits = {b: ([], []) for b in (EASY, HARD, JUNK)}
  for q, (easy, hard, junk) in enumerate(lists):
    rel = np.unique(np.concatenate([easy, hard, junk]))
    if rel.size and (rel[0] < 0 or rel[-1] >= n):
      raise ValueError(f"gnd[{q}]: expected db indices in [0, {n}), found {rel[0]}..{rel[-1]}")
    if not rel.size:
      continue
    s = s_all[q]
    if not np.isfinite(s.max() - s.min()):  # NaN propagates through min / max
      raise ValueError(f"scores[{q}]: expected finite scores, found NaN or inf")
    g = cells or max(4096, 256 * rel.size)
    pos = _rank_in_scores(s, rel, g)
    if top is not None and top.shape[1]:
      tq = top[q]
      order = np.argsort(tq, kind="stable")
      at = np.searchsorted(tq[order], rel).clip(max=tq.size - 1)
      in_top = tq[order][at] == rel
      # Outside the top list: K, plus the images outside it that the score order puts above.
      pos = tq.size + pos - _stable_desc_before(s[tq], tq, s[rel], rel)
      pos = np.where(in_top, order[at], pos)
    for bit, idx in zip((EASY, HARD, JUNK), (easy, hard, junk)):
      u = np.unique(idx)
      t = np.sort(pos[np.searchsorted(rel, u)])
      hits[bit][0].append(np.full(t.size, q, np.int64))
      hits[bit][1].append(t.astype(np.int64))
  hits = {b: (np.concatenate(qs or [np.zeros(0, np.int64)]),
              np.concatenate(ts or [np.zeros(0, np.int64)])) for b, (qs, ts) in hits.items()}
  return from_hits(hits, lists, kappas)


def percent(x, decimals: int | None = 2):
  """Fractions as the reference tools print them: percent, rounded to two decimals.

  Args:
    x: a fraction or an array of them (NaN stays NaN).
    decimals: digits kept; None keeps full precision (the per-query record of ``csa-jax eval``).

  Returns:
    A float for a scalar, else a float64 array of ``x``'s shape.
  """
  x = np.asarray(x, np.float64) * 100
  if decimals is not None:
    x = np.around(x, decimals)
  return float(x) if x.ndim == 0 else x


def format_results(results: dict, dataset: str, kappas=KAPPAS) -> str:
  """The two lines the reference tools print (``compute_map_and_print``), in percent.

  The numbers are the reference's (rounded to two decimals), written with two decimals each;
  mP@k as ``mP@1/5/10 E: 0.00/50.00/50.00`` rather than as a printed numpy array.

  Args:
    results: ``{protocol: {'map', 'mp', ...}}`` as ``revisited_map`` returns it.
    dataset: the name the lines start with.
    kappas: the k of mP@k, in the order of ``results[p]['mp']``.

  Returns:
    Two lines, without a trailing newline.
  """
  m = [f"{percent(results[p]['map']):.2f}" for p in PROTOCOLS]
  mp = ["/".join(f"{v:.2f}" for v in np.atleast_1d(percent(results[p]["mp"])))
        for p in PROTOCOLS]
  ks = "/".join(str(k) for k in kappas)
  return (f">> {dataset}: mAP E: {m[0]}, M: {m[1]}, H: {m[2]}\n"
          f">> {dataset}: mP@{ks} E: {mp[0]}, M: {mp[1]}, H: {mp[2]}")


def results_to_json(results: dict, kappas=KAPPAS) -> dict:
  """Percent values at full precision, per-query APs included; NaN (no positives) becomes null."""

  def pct(x):
    x = np.asarray(percent(x, None))
    return np.where(np.isnan(x), None, x).tolist()

  return {p: {"map": pct(r["map"]), "mp": dict(zip((f"P@{k}" for k in kappas), pct(r["mp"]))),
              "aps": pct(r["aps"]), "prs": pct(r["prs"])} for p, r in results.items()}
