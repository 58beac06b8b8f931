"""The paper's studies (supplement sections 1-3 and Table 1), one function each.

Each takes a ``Context`` and its options and returns (result dict, matplotlib figure); the
dispatcher (``dispatch.run_study``) writes them. mAP values are percent, E/M/H, per test dataset,
with the first round beside CSA's, all from ``evaluation.evaluate`` (``scoring``).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from csa_jax.evaluation.revisited import PROTOCOLS
from csa_jax.experiments import runs
from csa_jax.experiments.context import Context
from csa_jax.experiments.output import fmt_s, subplots
from csa_jax.experiments.runs import Run
from csa_jax.experiments.scoring import evaluate_all

log = logging.getLogger(__name__)

# The supplement's Figure 1 grids; "tiny" keeps two points per axis (tests).
ABLATION_AXES = {
    "depth": ("model.depth", (1, 2, 3, 4, 6), (1, 2)),
    "dim": ("model.dim", (256, 512, 768, 1024), (16, 32)),
    "mse": ("train.alpha", (0.0, 0.1, 0.2, 0.5, 1.0), (0.0, 0.2)),
    "temperature": ("model.temperature", (0.5, 1.0, 2.0, 4.0, 8.0), (1.0, 2.0)),
}


class Eta:
  """Progress over a study's runs, logged: ``[i/n] label: ... ETA``."""

  def __init__(self, name: str, total: int):
    self.name, self.total, self.done, self.t0 = name, total, 0, time.perf_counter()

  def step(self, label: str, summary: str) -> None:
    self.done += 1
    el = time.perf_counter() - self.t0
    eta = el / self.done * (self.total - self.done)
    log.info("experiment: %s [%d/%d] %s: %s; elapsed %s, ETA %s", self.name, self.done,
             self.total, label, summary, fmt_s(el), fmt_s(eta))


def summary_line(res: dict) -> str:
  """One log line's worth of ``evaluate_all`` results: M/H first round -> CSA per dataset."""
  return ", ".join(f"{ds} M/H {r['first_round']['medium']:.1f}/{r['first_round']['hard']:.1f} -> "
                   f"{r['csa']['medium']:.1f}/{r['csa']['hard']:.1f}" for ds, r in res.items())


def _point(run: Run, res: dict, **kw) -> dict:
  return {**kw, "run": run.workdir, "train_s": round(run.train_s, 1), "reused": run.reused,
          "results": res}


def _lines(ax, xs, points, datasets, xlabel, title, key="results"):
  """CSA M and H (solid) and the first round (dashed) against categorical x."""
  pos = np.arange(len(xs))
  for ds in datasets:
    for proto, mark in (("medium", "o"), ("hard", "s")):
      line, = ax.plot(pos, [p[key][ds]["csa"][proto] for p in points], marker=mark,
                      label=f"{ds} CSA {proto[0].upper()}")
      ax.plot(pos, [p[key][ds]["first_round"][proto] for p in points], ls="--", lw=1,
              color=line.get_color(), label=f"{ds} first round {proto[0].upper()}")
  ax.set_xticks(pos, [str(x) for x in xs])
  ax.set_xlabel(xlabel)
  ax.set_ylabel("mAP (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)


def ablation(ctx: Context, axes: list[str], grid: dict | None = None) -> tuple[dict, object]:
  """Depth, hidden size, MSE weight and temperature, one axis at a time around the base config.

  Args:
    ctx: the study.
    axes: ``ABLATION_AXES`` names.
    grid: {axis: values} replacing the paper's values of those axes.

  Returns:
    ({'axes': {axis: {'key', 'base', 'points'}}}, figure); each point holds the value, its run
    and ``evaluate_all``'s results.
  """
  tiny = ctx.size == "tiny"
  grid = grid or {}
  plan = [(a, ABLATION_AXES[a][0], v) for a in axes
          for v in grid.get(a, ABLATION_AXES[a][2 if tiny else 1])]
  eta, out = Eta(ctx.name, len(plan)), {}
  for axis, key, value in plan:
    run = runs.train(ctx, {key: value}, label=f"{axis}={value}")
    res = evaluate_all(ctx, run)
    eta.step(f"{axis}={value}", summary_line(res))
    entry = out.setdefault(axis, {"key": key, "base": config_value(ctx.config, key), "points": []})
    entry["points"].append(_point(run, res, value=value))
  fig, axs = subplots(1, len(out), figsize=(4.5 * len(out), 4), squeeze=False)
  for ax, (axis, e) in zip(axs[0], out.items()):
    xs = [p["value"] for p in e["points"]]
    _lines(ax, xs, e["points"], ctx.data.datasets, e["key"], axis)
    if e["base"] in xs:
      ax.axvline(xs.index(e["base"]), color="gray", ls=":", lw=1)
  _legend_below(fig, axs[0][0])
  fig.suptitle(f"CSA ablations ({ctx.feature}, test K={ctx.K}; dotted: the base config)")
  return {"axes": out}, fig


def _legend_below(fig, ax):
  fig.tight_layout(rect=(0, 0.1, 1, 0.94))
  fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)


def config_value(config, dotted: str):
  """The leaf ``a.b.c`` of a ConfigDict."""
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _mean_std(values: list[float]) -> dict:
  a = np.asarray(values, np.float64)
  return {"mean": round(float(a.mean()), 4),
          "std": round(float(a.std(ddof=1)), 4) if len(a) > 1 else 0.0}


def seeds(ctx: Context, n: int) -> tuple[dict, object]:
  """The base config trained with seeds 0..n-1: mean and sample standard deviation of mAP.

  Args:
    ctx: the study.
    n: number of seeds.

  Returns:
    ({'seeds': points, 'summary': {dataset: {'first_round'|'csa': {protocol: {'mean',
    'std'}}}}}, figure).
  """
  eta, points = Eta(ctx.name, n), []
  for seed in range(n):
    run = runs.train(ctx, {"train.seed": seed}, label=f"seed={seed}")
    res = evaluate_all(ctx, run)
    eta.step(f"seed={seed}", summary_line(res))
    points.append(_point(run, res, seed=seed))
  summary = {ds: {m: {p: _mean_std([q["results"][ds][m][p] for q in points]) for p in PROTOCOLS}
                  for m in ("first_round", "csa")} for ds in ctx.data.datasets}
  fig, axs = subplots(1, len(summary), figsize=(5 * len(summary), 4), squeeze=False)
  x = np.arange(len(PROTOCOLS))
  for ax, (ds, s) in zip(axs[0], summary.items()):
    for j, m in enumerate(("first_round", "csa")):
      ax.bar(x + (j - 0.5) * 0.38, [s[m][p]["mean"] for p in PROTOCOLS], 0.38,
             yerr=[s[m][p]["std"] for p in PROTOCOLS], capsize=4, label=m.replace("_", " "))
    ax.set_xticks(x, ["E", "M", "H"])
    ax.set_ylabel("mAP (%)")
    ax.set_title(f"{ds}: {n} seeds, mean +- std")
    ax.legend()
  return {"seeds": points, "summary": summary, "std": "sample (ddof=1)"}, fig


def cross_feature(ctx: Context, train_on: list[str]) -> tuple[dict, object]:
  """Train on one descriptor set, re-rank the first-round lists of every set (supp. Table 1).

  Args:
    ctx: the study.
    train_on: descriptor sets to train a model on (each tested on every set of the study data).

  Returns:
    ({'matrix': {train set: {test set: evaluate_all results}}, ...}, figure).
  """
  feats = ctx.data.features
  eta, matrix = Eta(ctx.name, len(train_on)), {}
  for f_tr in train_on:
    run = runs.train(ctx, feature=f_tr, label=f"train on {f_tr}")
    matrix[f_tr] = {f_te: evaluate_all(ctx, run, feature=f_te) for f_te in feats}
    matrix[f_tr]["_run"] = run.workdir
    eta.step(f"train on {f_tr}", "; ".join(f"{f}: {summary_line(matrix[f_tr][f])}" for f in feats))
  ds_list = ctx.data.datasets
  fig, axs = subplots(len(ds_list), 2, squeeze=False, figsize=(
      5 + 1.2 * len(feats), 1 + 1.6 * len(ds_list) * (len(train_on) + 1) / 2))
  for i, ds in enumerate(ds_list):
    for j, proto in enumerate(("medium", "hard")):
      rows = [[matrix[train_on[0]][f][ds]["first_round"][proto] for f in feats]]
      rows += [[matrix[t][f][ds]["csa"][proto] for f in feats] for t in train_on]
      a = np.asarray(rows)
      ax = axs[i][j]
      ax.imshow(a, cmap="viridis", aspect="auto")
      for (r, c), v in np.ndenumerate(a):
        ax.text(c, r, f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
      ax.set_xticks(range(len(feats)), feats, rotation=20)
      ax.set_yticks(range(len(rows)), ["first round"] + [f"CSA trained on {t}" for t in train_on])
      ax.set_xlabel("test descriptors")
      ax.set_title(f"{ds} mAP {proto[0].upper()} (%)")
  fig.tight_layout()
  return {"train_on": train_on, "test_on": feats, "matrix": matrix}, fig


def kl_sweep(ctx: Context, k_values: list[int], l_values: list[int]) -> tuple[dict, object]:
  """K at test time with the default model; L (the model's input width) by one model per L.

  Args:
    ctx: the study.
    k_values: test-time K values (those above the smallest database are dropped).
    l_values: anchors L, one trained model each (those above it + 1 are dropped).

  Returns:
    ({'K': points, 'L': points, 'model_L', 'note'}, figure).
  """
  n_db = min(len(ctx.data.test_set(ctx.feature, ds).db_NxC) for ds in ctx.data.datasets)
  k_values = [k for k in k_values if k <= n_db]
  l_values = [l for l in l_values if l - 1 <= n_db]
  eta = Eta(ctx.name, len(k_values) + len(l_values))
  run = runs.default_model(ctx)
  k_points = []
  for k in k_values:
    res = evaluate_all(ctx, run, K=k)
    eta.step(f"K={k}", summary_line(res))
    k_points.append(_point(run, res, K=k))
  l_points = []
  for l in l_values:
    r = runs.train(ctx, {"model.anchors": l}, label=f"L={l}")
    res = evaluate_all(ctx, r)
    eta.step(f"L={l}", summary_line(res))
    l_points.append(_point(r, res, L=l))
  fig, axs = subplots(1, 2, figsize=(10, 4), squeeze=False)
  _lines(axs[0][0], k_values, k_points, ctx.data.datasets, "K (test time)",
         f"re-ranking depth K (model L={run.cfg.anchors})")
  if l_points:
    _lines(axs[0][1], l_values, l_points, ctx.data.datasets, "L (trained per value)",
           f"anchors L (test K={ctx.K})")
  _legend_below(fig, axs[0][0])
  return {"model_L": run.cfg.anchors, "K": k_points, "L": l_points,
          "note": "K varies at test time with one model; L is the model's input width, so each "
                  "L is a model trained with that L (training K = config data.K)"}, fig
