"""The README table: first round, AQE, alpha-QE, alpha-DBA, CSA and CSA after alpha-DBA.

Each classic method's k is chosen on the test set itself (the best mean Medium mAP over the test
datasets, from a small grid): an oracle choice that flatters the baselines, so CSA is compared
with their best case. alpha = 3 for alpha-QE and alpha-DBA (Radenovic et al.'s setting).
"CSA after alpha-DBA" re-ranks, with the same trained model, the first-round lists of the
original queries against the alpha-DBA database, its affinities built from those descriptors.
"""

from __future__ import annotations

import numpy as np

from csa_jax.retrieval import baselines
from csa_jax.experiments.common import (PROTOCOLS, Context, TestSet, csa_top, fmt_s, log,
                                        mean_ap, pyplot, rank_depth)

K_GRID = (1, 2, 3, 5, 10, 20, 30, 50, 100)
K_GRID_TINY = (1, 3)
ALPHA = 3.0


def _first(ts: TestSet, T: int):
  return np.asarray(baselines.search(ts.q_QxC, ts.db_NxC, T))


def _mean_m(res: dict) -> float:
  return float(np.mean([r["medium"] for r in res.values()]))


def run_baselines(ctx: Context, k_grid=None, alpha: float = ALPHA) -> tuple[dict, object]:
  """Returns ({'table': rows, 'grid': every baseline setting's mAP, ...}, figure)."""
  k_grid = list(k_grid or (K_GRID_TINY if ctx.size == "tiny" else K_GRID))
  model = ctx.default_model()
  L = model.cfg.anchors
  sets = {ds: ctx.bench.test_set(ctx.feature, ds) for ds in ctx.bench.datasets}
  T = {ds: rank_depth(len(ts.db_NxC), ctx.K, L) for ds, ts in sets.items()}
  first = {ds: _first(ts, T[ds]) for ds, ts in sets.items()}

  def score(fn):
    return {ds: mean_ap(fn(ds, ts), ts.gnd) for ds, ts in sets.items()}

  grid = {"aqe": {}, "alpha_qe": {}, "alpha_dba": {}}
  dba_db = {}
  for k in k_grid:
    if k >= min(T.values()):
      continue
    grid["aqe"][k] = score(lambda ds, ts: baselines.aqe(ts.q_QxC, ts.db_NxC, first[ds], k=k))
    grid["alpha_qe"][k] = score(lambda ds, ts: baselines.alpha_qe(
        ts.q_QxC, ts.db_NxC, first[ds], k=k, alpha=alpha))
    for ds, ts in sets.items():
      dba_db[ds, k] = baselines.augment_database(ts.db_NxC, k, alpha)
    grid["alpha_dba"][k] = score(lambda ds, ts: baselines.search(ts.q_QxC, dba_db[ds, k], T[ds]))
    log(f"{ctx.name}: k={k}: " + ", ".join(f"{m} M {_mean_m(grid[m][k]):.2f}" for m in grid))
  best = {m: max(g, key=lambda k: _mean_m(g[k])) for m, g in grid.items()}
  kd = best["alpha_dba"]

  def dba_first(ds):
    return np.asarray(baselines.search(sets[ds].q_QxC, dba_db[ds, kd], T[ds]))

  def on_dba(ds):
    return TestSet(sets[ds].q_QxC, np.asarray(dba_db[ds, kd]), sets[ds].gnd)

  table = [
      ("first round", {}, score(lambda ds, ts: first[ds])),
      ("AQE", {"k": best["aqe"]}, grid["aqe"][best["aqe"]]),
      ("alpha-QE", {"k": best["alpha_qe"], "alpha": alpha}, grid["alpha_qe"][best["alpha_qe"]]),
      ("alpha-DBA", {"k": kd, "alpha": alpha}, grid["alpha_dba"][kd]),
      ("alpha-DBA + alpha-QE", {"k_dba": kd, "k_qe": best["alpha_qe"], "alpha": alpha},
       score(lambda ds, ts: baselines.alpha_qe(ts.q_QxC, dba_db[ds, kd], dba_first(ds),
                                               k=best["alpha_qe"], alpha=alpha))),
      ("CSA", {"K": ctx.K, "L": L}, score(lambda ds, ts: csa_top(model, ts, first[ds], ctx.K))),
      ("alpha-DBA + CSA", {"k_dba": kd, "alpha": alpha, "K": ctx.K, "L": L},
       score(lambda ds, ts: csa_top(model, on_dba(ds), dba_first(ds), ctx.K))),
  ]
  rows = [{"method": name, "params": params, "map": res} for name, params, res in table]
  print(markdown_table(rows, ctx.bench.datasets))
  plt = pyplot()
  fig, axs = plt.subplots(1, len(sets), figsize=(8 * len(sets), 4.5), squeeze=False)
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
    log(f"{ctx.name}: model from --model {ctx.model_path}")
  else:
    log(f"{ctx.name}: model {'reused' if model.reused else 'trained'} ({model.workdir}; "
        f"training took {fmt_s(model.train_s)})")
  return {"table": rows, "grid": grid, "k_grid": k_grid, "alpha": alpha, "model": model.workdir,
          "model_train_s": round(model.train_s, 1),
          "selection": "k of each classic method: best mean Medium mAP on the test set (oracle)"
          }, fig


def markdown_table(rows: list[dict], datasets: list[str]) -> str:
  head = "| method | " + " | ".join(f"{ds} E | {ds} M | {ds} H" for ds in datasets) + " |"
  sep = "|---|" + "---|---|---|" * len(datasets)
  lines = [head, sep]
  for r in rows:
    params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
    name = f"{r['method']} ({params})" if params else r["method"]
    lines.append(f"| {name} | " + " | ".join(f"{r['map'][ds][p]:.2f}" for ds in datasets
                                             for p in PROTOCOLS) + " |")
  return "\n".join(lines)
