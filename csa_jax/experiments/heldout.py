"""Validation on held-out whole clusters: does the validation split predict the test numbers?

The supplement's question about the HOW split, asked on any data: train without a set of whole
clusters (landmarks), and after every epoch score both those held-out images and the test sets.
"""

from __future__ import annotations

import jax
import numpy as np

from csa_jax import parallel
from csa_jax.experiments import runs
from csa_jax.experiments.datasets import TestSet
from csa_jax.experiments.context import Context
from csa_jax.experiments.output import subplots
from csa_jax.experiments.runs import Run
from csa_jax.experiments.scoring import evaluate_all, evaluate_run
from csa_jax.experiments.studies import Eta, summary_line
from csa_jax.train import optim
from csa_jax.train import step as train_step
from csa_jax.train.checkpoint import Checkpointer


def holdout_split(clusters_N: np.ndarray, fraction: float, seed: int = 0):
  """Splits training images by whole clusters, so no held-out landmark is seen in training.

  Args:
    clusters_N: (N,) cluster id of every training image.
    fraction: share of the multi-image clusters, and of the singleton images, held out.
    seed: the split's seed.

  Returns:
    (train rows, held-out rows): sorted int arrays that partition range(N).
  """
  ids, counts = np.unique(clusters_N, return_counts=True)
  rng = np.random.default_rng(seed)
  held = set()
  for group in (ids[counts > 1], ids[counts == 1]):
    n = int(round(fraction * len(group)))
    held.update(rng.permutation(group)[:n].tolist())
  mask = np.isin(clusters_N, list(held))
  return np.nonzero(~mask)[0], np.nonzero(mask)[0]


def heldout_test_set(feats_NxC, clusters_N, max_queries: int, seed: int = 0) -> TestSet:
  """A revisited-style test set of held-out images.

  Args:
    feats_NxC: (N, C) descriptors of the held-out images.
    clusters_N: (N,) their cluster ids.
    max_queries: at most this many queries, drawn from images whose landmark has others.
    seed: which queries.

  Returns:
    TestSet: queries from held-out landmarks, every held-out image as the database; positives
    (easy) the query's landmark, the query itself junk (it is in the database).
  """
  ids, inv, counts = np.unique(clusters_N, return_inverse=True, return_counts=True)
  cand = np.nonzero(counts[inv] > 1)[0]
  rng = np.random.default_rng(seed)
  qidx = np.sort(rng.permutation(cand)[:max_queries])
  gnd = [{"easy": np.setdiff1d(np.nonzero(clusters_N == clusters_N[i])[0], [i]),
          "hard": np.zeros(0, np.int64), "junk": np.array([i])} for i in qidx]
  return TestSet(feats_NxC[qidx], feats_NxC, gnd)


def heldout_val(ctx: Context, fraction: float, max_queries: int) -> tuple[dict, object]:
  """Trains without held-out whole clusters; after every epoch, mAP on them and on the test sets.

  Args:
    ctx: the study.
    fraction: share of the clusters held out (``holdout_split``).
    max_queries: validation queries at most.

  Returns:
    ({'epochs': points, 'selected_by_val', 'pearson_val_vs_<ds>_medium', ...}, figure).
  """
  clusters = ctx.data.clusters()
  tr_rows, ho_rows = holdout_split(clusters, fraction)
  feats = ctx.data.train_feats(ctx.feature)
  val = heldout_test_set(feats[ho_rows], clusters[ho_rows], max_queries)
  config = ctx.make_config()
  K, L = config.data.K, config.model.anchors
  n_train = ctx.data.train_set(ctx.feature, K, L, ctx.path("cache"), tr_rows).num_samples
  spe = n_train // config.train.global_batch
  epochs = config.train.epochs
  run = runs.train(ctx, {"checkpoint.every_steps": spe, "checkpoint.keep": epochs},
                   rows=tr_rows, keep_checkpoints=True, label="held-out-cluster split")
  mesh = parallel.make_mesh()  # the training run's layout
  tx = optim.optimizer_from_config(config.train, spe)
  like = train_step.init_state(run.cfg, tx, jax.random.key(0), mesh)
  ckpt = Checkpointer(f"{run.workdir}/checkpoints", keep=epochs)
  eta, points = Eta(ctx.name, len(ckpt.all_steps())), []
  for step in ckpt.all_steps():
    state, _, _ = ckpt.restore(like, step)
    r = Run(jax.device_get(state.params), run.cfg, run.workdir, run.train_s, run.reused)
    v = evaluate_run(r, val, ctx.K)
    res = evaluate_all(ctx, r)
    eta.step(f"epoch {step // spe}", f"val mAP {v['first_round']['medium']:.1f} -> "
             f"{v['csa']['medium']:.1f}; {summary_line(res)}")
    points.append({"epoch": step // spe, "step": step,
                   "val": {m: v[m]["medium"] for m in v}, "results": res})
  ckpt.close()
  ds0 = ctx.data.datasets[0]
  sel = max(points, key=lambda p: p["val"]["csa"])
  vals = [p["val"]["csa"] for p in points]
  tests = [p["results"][ds0]["csa"]["medium"] for p in points]
  corr = (float(np.corrcoef(vals, tests)[0, 1]) if len(points) > 2 and np.std(vals) > 0
          and np.std(tests) > 0 else None)
  fig, ax = subplots(figsize=(7, 4))
  ep = [p["epoch"] for p in points]
  ax.plot(ep, vals, marker="o", label="held-out clusters mAP (CSA)")
  ax.axhline(points[0]["val"]["first_round"], ls="--", lw=1, label="held-out first round")
  for ds in ctx.data.datasets:
    for proto in ("medium", "hard"):
      ax.plot(ep, [p["results"][ds]["csa"][proto] for p in points], marker=".",
              label=f"{ds} CSA {proto[0].upper()}")
  ax.set_xticks(ep)
  ax.set_xlabel("epoch")
  ax.set_ylabel("mAP (%)")
  ax.set_title(f"validation on {len(val.gnd)} queries of held-out clusters")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  return {"fraction": fraction, "train_images": int(len(tr_rows)),
          "heldout_images": int(len(ho_rows)), "val_queries": len(val.gnd),
          "epochs": points, "selected_by_val": {"epoch": sel["epoch"], "results": sel["results"]},
          f"pearson_val_vs_{ds0}_medium": corr,
          "val_metric": "mAP (%) with the query itself ignored (junk)"}, fig
