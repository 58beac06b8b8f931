"""The README table: first round, AQE, alpha-QE, alpha-DBA, CSA and CSA after alpha-DBA.

Each classic method's k is chosen on the test set itself (the best mean Medium mAP over the test
datasets, from a small grid): an oracle choice that flatters the baselines, so CSA is compared
with their best case. alpha = 3 for alpha-QE and alpha-DBA (Radenovic et al.'s setting).
"CSA after alpha-DBA" re-ranks, with the same trained model, the first-round lists of the
original queries against the alpha-DBA database, its affinities built from those descriptors.

Every row is scored exactly over the whole database by ``evaluation.evaluate``: a query
expansion is the first round of its expanded queries, a database augmentation the first round
against the augmented database (``retrieval.baselines`` holds the methods).
"""

from __future__ import annotations

import logging

import numpy as np

from csa_jax.evaluation.revisited import PROTOCOLS
from csa_jax.experiments import runs
from csa_jax.experiments.context import Context
from csa_jax.experiments.output import fmt_s, subplots
from csa_jax.experiments.scoring import mean_ap
from csa_jax.retrieval import baselines

log = logging.getLogger(__name__)

K_GRID = (1, 2, 3, 5, 10, 20, 30, 50, 100)
K_GRID_TINY = (1, 3)
ALPHA = 3.0


def _mean_m(res: dict) -> float:
  return float(np.mean([r["medium"] for r in res.values()]))


def run_baselines(ctx: Context, k_grid=None, alpha: float = ALPHA) -> tuple[dict, object]:
  """Every method on every test dataset of the study's descriptor set.

  Args:
    ctx: the study.
    k_grid: k values tried for AQE, alpha-QE and alpha-DBA (default ``K_GRID``, or
      ``K_GRID_TINY`` for a tiny study); values >= the smallest database are skipped.
    alpha: the weight exponent of alpha-QE and alpha-DBA.

  Returns:
    ({'table': [{'method', 'params', 'map': {dataset: {'easy', 'medium', 'hard'}}}], 'grid':
    every setting's mAP, ...}, figure); mAP in percent.
  """
  k_grid = list(k_grid or (K_GRID_TINY if ctx.size == "tiny" else K_GRID))
  model = runs.default_model(ctx)
  L = model.cfg.anchors
  sets = {ds: ctx.data.test_set(ctx.feature, ds) for ds in ctx.data.datasets}
  n_db = min(len(ts.db_NxC) for ts in sets.values())
  k_grid_run = [k for k in k_grid if k < n_db]
  # The expansions read the first k of each first-round list, nothing below.
  depth = {ds: min(len(ts.db_NxC), max([1] + k_grid_run)) for ds, ts in sets.items()}
  first = {ds: np.asarray(baselines.search(ts.q_QxC, ts.db_NxC, depth[ds]))
           for ds, ts in sets.items()}

  def first_round(fn):
    """{dataset: first-round mAP} of the (queries, database) that ``fn(ds, ts)`` returns."""
    out = {}
    for ds, ts in sets.items():
      q_QxC, db_NxC = fn(ds, ts)
      out[ds] = mean_ap(q_QxC, db_NxC, ts.gnd)["first_round"]
    return out

  grid = {"aqe": {}, "alpha_qe": {}, "alpha_dba": {}}
  dba_db = {}
  for k in k_grid_run:
    grid["aqe"][k] = first_round(lambda ds, ts: (
        baselines.expand_queries(ts.q_QxC, ts.db_NxC, first[ds], k), ts.db_NxC))
    grid["alpha_qe"][k] = first_round(lambda ds, ts: (
        baselines.expand_queries(ts.q_QxC, ts.db_NxC, first[ds], k, alpha), ts.db_NxC))
    for ds, ts in sets.items():
      dba_db[ds, k] = np.asarray(baselines.augment_database(ts.db_NxC, k, alpha))
    grid["alpha_dba"][k] = first_round(lambda ds, ts: (ts.q_QxC, dba_db[ds, k]))
    log.info("experiment: %s: k=%d: %s", ctx.name, k,
             ", ".join(f"{m} M {_mean_m(grid[m][k]):.2f}" for m in grid))
  best = {m: max(g, key=lambda k: _mean_m(g[k])) for m, g in grid.items()}
  kd, kq = best["alpha_dba"], best["alpha_qe"]

  def dba_expanded(ds, ts):
    dba_first = np.asarray(baselines.search(ts.q_QxC, dba_db[ds, kd], depth[ds]))
    return baselines.expand_queries(ts.q_QxC, dba_db[ds, kd], dba_first, kq, alpha), \
        dba_db[ds, kd]

  plain = {ds: mean_ap(ts.q_QxC, ts.db_NxC, ts.gnd, model, ctx.K) for ds, ts in sets.items()}
  on_dba = {ds: mean_ap(ts.q_QxC, dba_db[ds, kd], ts.gnd, model, ctx.K)
            for ds, ts in sets.items()}
  table = [
      ("first round", {}, {ds: r["first_round"] for ds, r in plain.items()}),
      ("AQE", {"k": best["aqe"]}, grid["aqe"][best["aqe"]]),
      ("alpha-QE", {"k": kq, "alpha": alpha}, grid["alpha_qe"][kq]),
      ("alpha-DBA", {"k": kd, "alpha": alpha}, grid["alpha_dba"][kd]),
      ("alpha-DBA + alpha-QE", {"k_dba": kd, "k_qe": kq, "alpha": alpha},
       first_round(dba_expanded)),
      ("CSA", {"K": ctx.K, "L": L}, {ds: r["csa"] for ds, r in plain.items()}),
      ("alpha-DBA + CSA", {"k_dba": kd, "alpha": alpha, "K": ctx.K, "L": L},
       {ds: r["csa"] for ds, r in on_dba.items()}),
  ]
  rows = [{"method": name, "params": params, "map": res} for name, params, res in table]
  fig, axs = subplots(1, len(sets), figsize=(8 * len(sets), 4.5), squeeze=False)
  x = np.arange(len(rows))
  for ax, ds in zip(axs[0], sets):
    for j, p in enumerate(PROTOCOLS):
      ax.bar(x + (j - 1) * 0.27, [r["map"][ds][p] for r in rows], 0.27, label=p)
    ax.set_xticks(x, [r["method"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("mAP (%)")
    ax.set_title(f"{ds} ({ctx.feature}): re-ranking methods")
    ax.legend(loc="lower center", ncol=3, framealpha=0.9)
  fig.tight_layout()
  if ctx.model_path:
    log.info("experiment: %s: model from --model %s", ctx.name, ctx.model_path)
  else:
    log.info("experiment: %s: model %s (%s; training took %s)", ctx.name,
             "reused" if model.reused else "trained", model.workdir, fmt_s(model.train_s))
  return {"table": rows, "grid": grid, "k_grid": k_grid, "alpha": alpha, "model": model.workdir,
          "model_train_s": round(model.train_s, 1),
          "selection": "k of each classic method: best mean Medium mAP on the test set (oracle)"
          }, fig


def markdown_table(rows: list[dict], datasets: list[str]) -> str:
  """The README's table of ``run_baselines``' rows.

  Args:
    rows: the result's 'table'.
    datasets: the test datasets, in column order.

  Returns:
    A markdown table, mAP (%) E/M/H per dataset, two decimals.
  """
  head = "| method | " + " | ".join(f"{ds} E | {ds} M | {ds} H" for ds in datasets) + " |"
  sep = "|---|" + "---|---|---|" * len(datasets)
  lines = [head, sep]
  for r in rows:
    params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
    name = f"{r['method']} ({params})" if params else r["method"]
    lines.append(f"| {name} | " + " | ".join(f"{r['map'][ds][p]:.2f}" for ds in datasets
                                             for p in PROTOCOLS) + " |")
  return "\n".join(lines)
