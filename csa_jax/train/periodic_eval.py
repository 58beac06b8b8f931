"""Evaluation during training: revisited mAP of CSA-re-ranked test sets every N epochs.

The test sets, their first-round rankings and scores are computed once; each evaluation only
re-ranks the top-K with the current parameters (``reranking.csa_rerank``) and scores the result
exactly (``evaluate.revisited_map_from_scores``). Every process evaluates on its own devices, so
no cross-host traffic; only process 0 logs.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh

from csa_jax.data import readers as data_io
from csa_jax.evaluation import revisited as evaluate
from csa_jax.core.config import ModelConfig
from csa_jax.retrieval.rerank import csa_rerank
from csa_jax.retrieval.search import top_k_search


def _mean_ap(res) -> dict:
  return {p: round(float(res[p]["map"]) * 100, 2) for p in evaluate.PROTOCOLS}


class Evaluator:
  """``evaluator(params, model_cfg) -> {dataset: {'easy','medium','hard'}}`` (mAP, percent)."""

  def __init__(self, sets: dict, K: int, batch: int, every: int):
    self.sets, self.K, self.batch, self.every = sets, K, batch, every
    self.mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
    self._prepared = {}

  def _prepare(self, name: str, anchors: int):
    if (name, anchors) not in self._prepared:
      q, db, gnd = data_io.load_test_set(*self.sets[name])
      k = min(self.K, len(db))
      depth = min(len(db), max(k, anchors - 1))
      _, top = top_k_search(q, db, depth, devices=jax.local_devices())
      scores = q @ db.T
      first = _mean_ap(evaluate.revisited_map_from_scores(scores, gnd))
      self._prepared[(name, anchors)] = (q, db, gnd, np.asarray(top), scores, k, first)
    return self._prepared[(name, anchors)]

  def __call__(self, params, model_cfg: ModelConfig) -> dict:
    out = {}
    for name in self.sets:
      q, db, gnd, top, scores, k, first = self._prepare(name, model_cfg.anchors)
      new_top = csa_rerank(params, model_cfg, q, db, top, k, model_cfg.anchors,
                           batch_size=self.batch, mesh=self.mesh)
      csa = _mean_ap(evaluate.revisited_map_from_scores(scores, gnd, top_QxK=new_top[:, :k]))
      out[name] = {"first_round": first, "csa": csa, "K": k}
    return out


def make_evaluator(config, workdir: str) -> Evaluator:
  """From the config's ``eval`` group: test sets under ``eval.root`` (default ``data.root``)."""
  del workdir
  ec = config.eval
  root = ec.get("root") or config.data.get("root") or ""
  sets = {}
  for ds in ec.datasets:
    feats = os.path.join(root, ec.features.format(ds=ds))
    gnd = os.path.join(root, ec.gnd.format(ds=ds))
    sets[ds] = (feats, gnd)
  return Evaluator(sets, ec.K, ec.batch, ec.every_epochs)
