"""The one evaluation routine: first-round search, optional CSA re-ranking, exact revisited mAP.

``csa-jax eval``, the demo, the in-training evaluator and every ``csa-jax experiment`` study call
``evaluate``, so "first round vs CSA" is computed one way everywhere (docs/method.md sections 1
and 7). The evaluation is exact over the whole database: every score is kept and
``revisited_map_from_scores`` ranks each positive among all N images, where scoring a ranking
truncated at T would drop every positive below T and so under-report AP (``results_from_scores``
shares the queries out to one thread per core, with the same numbers). ``mean_ap_percent`` is
the summary the tables and JSON files print, rounded by ``revisited.percent``.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from csa_jax.data.index_lists import as_indices
from csa_jax.errors import fail
from csa_jax.evaluation import hits
from csa_jax.evaluation.revisited import KAPPAS, PROTOCOLS, percent, revisited_map_from_scores
from csa_jax.retrieval import validate
from csa_jax.retrieval.host_search import cores
from csa_jax.retrieval.search import top_k_search

log = logging.getLogger(__name__)

# Ranked list kept without a model: the exact evaluation needs only the scores, so any T would do.
FIRST_ROUND_T = 100


def evaluate(q_QxC, db, gnd, model=None, K: int = 1024, *, batch_size: int | None = None,
             search_dtype: str = "float32", block: int | None = None, devices=None,
             progress: bool = False, source: str = "db") -> dict:
  """First-round search and, with a model, CSA re-ranking, both scored exactly over the db.

  A host driver (it builds device meshes and returns numpy): it checks its arguments as
  ``rerank_shortlist`` does (``retrieval.validate``) and the gnd's ids against the database.

  Args:
    q_QxC: (Q, C) query descriptors; rows that are not unit-norm are re-normalised (warning).
    db: (N, C) L2-normalised database: a numpy/jax array (re-normalised like the queries if
      needed), a ``.npy`` memmap or ``StackedRows`` (a test set followed by R1M distractors).
    gnd: Q dicts with 'easy', 'hard' and 'junk' db index lists.
    model: ``Model(params, cfg)`` or a ``(params, cfg)`` tuple to re-rank with CSA (anchors L
      from ``cfg.anchors``); None evaluates the first round only.
    K: candidates CSA re-ranks per query, >= 1; more than N re-ranks all N (with a warning).
    batch_size: queries per re-ranking call; None sizes it to the
      devices' free memory (8 per device on CPU).
    search_dtype: first-round scores, "float32" or "bfloat16" (float32 accumulation).
    block: db rows per search step (default about 64 MB; 32 MB per sgemm on the CPU).
    devices: devices to search and re-rank on; default all of ``jax.devices()`` (the
      in-training evaluator passes each process's local devices).
    progress: search progress lines on stderr (R1M-sized databases).
    source: the file the database came from, named in error messages.

  Returns:
    {'first_round': results, 'csa': results or None, 'info': {'queries', 'db_images',
    'search_dtype', 'K', 'L' (with a model), 'seconds': {'search', 'evaluate', 'rerank'}}},
    results being ``revisited_map_from_scores``'s dicts (fractions, per-query APs included).
  """
  if model is not None:  # a wrong model fails before the data is checked
    model = validate.check_model(model, "evaluate")
  db = validate.check_database(db, "evaluate", source)
  n = len(db)
  q_QxC = validate.check_queries(q_QxC, db.shape[1], "evaluate")
  _check_gnd(gnd, len(q_QxC), n)
  info = {"queries": len(q_QxC), "db_images": n, "search_dtype": search_dtype}
  seconds = {}
  if model is not None:
    L = model.cfg.anchors
    if K < 1:
      raise fail("evaluate", "K", "an integer >= 1 (candidates CSA re-ranks per query)", str(K))
    if L - 1 > n:
      raise fail(source, "db", f"at least L-1 = {L - 1} images (the model's anchors)",
                 f"{n} images")
    if K > n:
      log.warning("K=%d exceeds the %d database images; re-ranking all of them", K, n)
      K = n
    t = max(K, L - 1)  # the candidates and the anchors both come from the first-round list
    info.update(K=K, L=L)
  else:
    t = min(FIRST_ROUND_T, n)
  scores_QxN = np.empty((len(q_QxC), n), np.float32)
  t0 = time.perf_counter()
  _, top_QxT = top_k_search(q_QxC, db, t, block, dtype=search_dtype, devices=devices,
                            scores_out=scores_QxN, progress=progress, source=source)
  seconds["search"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  first = results_from_scores(scores_QxN, gnd)
  seconds["evaluate"] = time.perf_counter() - t0
  csa = None
  if model is not None:
    from csa_jax.retrieval.rerank import rerank_shortlist  # the model stack only when asked for
    t0 = time.perf_counter()
    new_top_QxT, _ = rerank_shortlist(q_QxC, db, top_QxT, model, K, batch_size=batch_size,
                                      devices=devices, source=source)
    seconds["rerank"] = time.perf_counter() - t0
    # The re-ordered top-K first, every other image after it by first-round score.
    csa = results_from_scores(scores_QxN, gnd, top_QxK=new_top_QxT[:, :K])
  info["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
  return {"first_round": first, "csa": csa, "info": info}


def results_from_scores(scores_QxN, gnd, top_QxK=None, workers: int | None = None) -> dict:
  """``revisited_map_from_scores`` with its queries shared out to threads, the same numbers.

  Each query's numbers depend on its own scores alone and the means are taken over the
  concatenated per-query arrays as ``revisited`` takes them, so the result is identical to one
  call; each thread ranks its queries' positives among all N scores (numpy releases the GIL).

  Args:
    scores_QxN: (Q, N) first-round scores.
    gnd: Q dicts with 'easy', 'hard' and 'junk' db index lists.
    top_QxK: optional (Q, K) db indices placed first (a re-ranked top-K), as
      ``revisited_map_from_scores`` takes them.
    workers: threads (default: one per core, at most one per query).

  Returns:
    ``revisited_map_from_scores``'s dict.
  """
  nq = len(gnd)
  workers = max(1, min(workers or cores(), nq))
  if workers == 1:
    return revisited_map_from_scores(scores_QxN, gnd, top_QxK)
  bounds = np.linspace(0, nq, workers + 1).astype(int)
  parts = [None] * workers

  def run(w: int):
    a, b = bounds[w], bounds[w + 1]
    try:
      parts[w] = revisited_map_from_scores(scores_QxN[a:b], gnd[a:b],
                                           None if top_QxK is None else top_QxK[a:b])
    except Exception:  # pylint: disable=broad-except  (raised again by one call, below)
      pass

  threads = [threading.Thread(target=run, args=(w,), name=f"csa_jax-evaluate-{w}")
             for w in range(workers)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if any(r is None for r in parts):  # its error as one call words it (query numbers and all)
    return revisited_map_from_scores(scores_QxN, gnd, top_QxK)
  summary = hits._summary  # pylint: disable=protected-access  (the one place means are taken)
  return {p: summary(np.concatenate([r[p]["aps"] for r in parts]),
                     np.concatenate([r[p]["prs"] for r in parts]), KAPPAS) for p in PROTOCOLS}


def _check_gnd(gnd, nq: int, n: int) -> None:
  """One gnd entry per query, each with 'easy', 'hard' and 'junk' ids in [0, N)."""
  if not isinstance(gnd, (list, tuple)) or len(gnd) != nq:
    found = f"{len(gnd)} entries" if isinstance(gnd, (list, tuple)) else type(gnd).__name__
    raise fail("evaluate", "gnd", f"a list of {nq} entries (one per query)", found)
  for i, e in enumerate(gnd):
    if not isinstance(e, dict) or not all(k in e for k in ("easy", "hard", "junk")):
      raise fail("evaluate", f"gnd[{i}]", "a dict with 'easy', 'hard' and 'junk' db ids",
                 type(e).__name__ if not isinstance(e, dict) else f"keys {sorted(e)}")
    for k in ("easy", "hard", "junk"):
      as_indices(e[k], "evaluate", f"gnd[{i}].{k}", n)


def mean_ap_percent(results: dict) -> dict:
  """The mAP line of a table: {'easy', 'medium', 'hard'} in percent, two decimals.

  Args:
    results: a ``revisited_map`` / ``evaluate`` results dict (fractions).

  Returns:
    {protocol: float} in percent, rounded by ``revisited.percent``; NaN when no query of the set
    has a positive in that protocol.
  """
  return {p: percent(results[p]["map"]) for p in PROTOCOLS}


def mean_ap_table(res: dict) -> dict:
  """An ``evaluate`` result as the tables print it: {'first_round', 'csa' (with a model)}, each
  ``mean_ap_percent``'s {'easy', 'medium', 'hard'}.

  Args:
    res: what ``evaluate`` returned.

  Returns:
    The mAP in percent of each round evaluated.
  """
  return {k: mean_ap_percent(res[k]) for k in ("first_round", "csa") if res[k] is not None}
