"""AP and mP@k from sparse "hits" (docs/method.md section 7): the shared core of both entry
points of ``revisited`` (rankings and full scores).

A query's ranking is reduced to the 0-based positions of its easy, hard and junk images; each
protocol is then a choice of which of these are positives and which are ignored, and the metrics
are a few vectorised passes over the positions. The summation order is the reference's, so the
numbers match it to the last bit.
"""

from __future__ import annotations

import numpy as np

# Label bits of an image for one query.
EASY, HARD, JUNK = 1, 2, 4
# Per protocol: (bits that are positives, bits that are ignored). An image both positive and
# ignored (e.g. listed as junk and easy) is a positive at its own rank and ignored for the images
# below it, exactly as the reference's position-based loop treats it.
PROTOCOL_BITS = {"easy": (EASY, JUNK | HARD), "medium": (EASY | HARD, JUNK),
                  "hard": (HARD, JUNK | EASY)}


def gnd_lists(gnd) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(easy, hard, junk) int64 arrays per query; 'junk' is optional, as in the reference."""
  out = []
  for q, g in enumerate(gnd):
    try:
      lists = [np.asarray(g[k]) for k in ("easy", "hard")] + [np.asarray(g.get("junk", ()))]
    except (KeyError, TypeError, AttributeError):
      raise ValueError(f"gnd[{q}]: expected a dict with 'easy', 'hard' (and 'junk') index lists, "
                       f"found {type(g).__name__} {sorted(g) if isinstance(g, dict) else ''}"
                       ) from None
    for k, a in zip(("easy", "hard", "junk"), lists):
      if a.size and not np.all(np.mod(a, 1) == 0):
        raise ValueError(f"gnd[{q}]['{k}']: expected integer db indices, found {a.dtype} values")
    out.append(tuple(a.astype(np.int64).ravel() for a in lists))
  return out


def _n_pos(lists, protocol: str) -> np.ndarray:
  """Positives per query as the reference counts them: the list's length, duplicates included."""
  e, h = ([len(x[i]) for x in lists] for i in (0, 1))
  n = {"easy": e, "medium": [a + b for a, b in zip(e, h)], "hard": h}[protocol]
  return np.asarray(n, np.float64)


def _metrics(pos_q, pos_t, junk_q, junk_t, n_pos_Q, kappas):
  """AP and P@k per query from sparse hits.

  pos_q/pos_t: query and 0-based position in its ranking of every retrieved positive, sorted by
  (q, t); junk_q/junk_t: the same for ignored images. n_pos_Q: positives per query (float).
  """
  nq = len(n_pos_Q)
  span = int(max(pos_t.max(initial=0), junk_t.max(initial=0))) + 1
  pos_key = pos_q * span + pos_t
  junk_key = junk_q * span + junk_t
  # A positive's rank r drops by the ignored images strictly above it.
  junk_above = (np.searchsorted(junk_key, pos_key, side="left")
                - np.searchsorted(junk_key, pos_q * span, side="left"))
  r = (pos_t - junk_above).astype(np.float64)
  # j: this positive's 0-based order among the query's retrieved positives.
  j = (np.arange(len(pos_q)) - np.searchsorted(pos_q, pos_q, side="left")).astype(np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    p0 = np.where(r == 0, 1.0, j / r)
    p1 = (j + 1.0) / (r + 1.0)
    # Same expression and summation order as the reference, so the sums match to the last bit.
    step = 1.0 / n_pos_Q
    aps = np.bincount(pos_q, weights=(p0 + p1) * step[pos_q] / 2.0,
                      minlength=nq).astype(np.float64)  # an empty bincount is int
  empty = n_pos_Q == 0
  aps[empty] = np.nan

  pos1 = r + 1.0  # 1-based adjusted ranks
  max_pos = np.zeros(nq)
  np.maximum.at(max_pos, pos_q, pos1)
  prs = np.zeros((nq, len(kappas)))
  for i, k in enumerate(kappas):
    kq = np.minimum(max_pos, k)  # 0 for a query with no retrieved positive
    hits = np.bincount(pos_q, weights=(pos1 <= kq[pos_q]), minlength=nq)
    with np.errstate(divide="ignore", invalid="ignore"):
      prs[:, i] = np.where(kq > 0, hits / np.where(kq > 0, kq, 1.0), 0.0)
  prs[empty] = np.nan
  return aps, prs


def _summary(aps, prs, kappas) -> dict:
  ok = ~np.isnan(aps)
  if ok.any():
    # Left-to-right sums divided by the count, as the reference accumulates them.
    m = sum(aps[ok].tolist()) / int(ok.sum())
    mp = np.sum(prs[ok], axis=0) / int(ok.sum())
  else:
    m, mp = float("nan"), np.full(len(kappas), np.nan)
  return {"map": m, "aps": aps, "mp": mp, "prs": prs}


def from_hits(hits_by_bit, lists, kappas):
  """Every protocol's numbers from the sparse positions of the easy, hard and junk images.

  Args:
    hits_by_bit: {EASY|HARD|JUNK: (q, t)}, int arrays sorted by (q, t): the query and the 0-based
      position in its ranking of each listed image found there.
    lists: ``gnd_lists(gnd)``.
    kappas: the k of mP@k.

  Returns:
    {'easy'|'medium'|'hard': {'map', 'aps', 'mp', 'prs'}} (see ``revisited.revisited_map``).
  """
  out = {}
  for name, (pbits, jbits) in PROTOCOL_BITS.items():
    pos = _union_hits([hits_by_bit[b] for b in (EASY, HARD, JUNK) if b & pbits])
    junk = _union_hits([hits_by_bit[b] for b in (EASY, HARD, JUNK) if b & jbits])
    aps, prs = _metrics(*pos, *junk, _n_pos(lists, name), tuple(kappas))
    out[name] = _summary(aps, prs, kappas)
  return out


def _union_hits(parts):
  """Union of sparse (q, t) hit sets, sorted by (q, t), each position once."""
  q = np.concatenate([p[0] for p in parts])
  t = np.concatenate([p[1] for p in parts])
  if len(parts) > 1 and q.size:
    span = int(t.max()) + 1
    key = np.unique(q * span + t)
    q, t = key // span, key % span
  return q, t
