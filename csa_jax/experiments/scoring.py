"""The studies' numbers: ``csa_jax.evaluation.evaluate`` on their test sets, mAP in percent.

Every number a study reports is the exact revisited mAP over the whole database (docs/method.md
section 7), rounded as every table and JSON of csa_jax rounds it (two decimals).
"""

from __future__ import annotations

from csa_jax.evaluation.evaluate import evaluate, mean_ap_table
from csa_jax.experiments.datasets import TestSet
from csa_jax.experiments.context import Context
from csa_jax.experiments.runs import Run


def mean_ap(q_QxC, db_NxC, gnd, run: Run | None = None, K: int = 1024) -> dict:
  """First-round mAP of ``q_QxC`` against ``db_NxC`` and, with a run, CSA's.

  Args:
    q_QxC: (Q, C) queries (e.g. expanded by alpha-QE).
    db_NxC: (N, C) database (e.g. augmented by alpha-DBA).
    gnd: Q ground-truth dicts.
    run: the model that re-ranks; None for the first round only.
    K: candidates re-ranked per query (at most N).

  Returns:
    {'first_round': {'easy', 'medium', 'hard'}} plus 'csa' with a run, percent.
  """
  model = None if run is None else (run.params, run.cfg)
  res = evaluate(q_QxC, db_NxC, gnd, model=model, K=min(K, len(db_NxC)))
  return mean_ap_table(res)


def evaluate_run(run: Run, ts: TestSet, K: int) -> dict:
  """{'first_round': mAP, 'csa': mAP} (percent, E/M/H) of one test set re-ranked by ``run``.

  Args:
    run: the model.
    ts: the test set.
    K: candidates re-ranked per query.

  Returns:
    {'first_round'|'csa': {'easy', 'medium', 'hard'}}, percent.
  """
  return mean_ap(ts.q_QxC, ts.db_NxC, ts.gnd, run, K)


def evaluate_all(ctx: Context, run: Run, feature: str | None = None,
                 K: int | None = None) -> dict:
  """``evaluate_run`` on every test dataset of one descriptor set.

  Args:
    ctx: the study.
    run: the model.
    feature: the descriptor set (default the study's).
    K: candidates re-ranked per query (default the study's).

  Returns:
    {dataset: {'first_round'|'csa': {'easy', 'medium', 'hard'}}}.
  """
  feature = feature or ctx.feature
  return {ds: evaluate_run(run, ctx.data.test_set(feature, ds), K or ctx.K)
          for ds in ctx.data.datasets}
