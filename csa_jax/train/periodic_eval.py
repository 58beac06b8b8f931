"""Evaluation during training: revisited mAP of CSA-re-ranked test sets every N epochs.

Each evaluation is ``csa_jax.evaluation.evaluate`` with the current parameters: the first-round
search, CSA's re-ranking of the top-K and the exact revisited mAP of both (docs/method.md
section 7), so the numbers in a training log are those ``csa-jax eval`` prints for the same
weights. The test sets are read once; the first round is recomputed each time, a search of a few
queries that costs little next to the re-ranking. Every process evaluates on its own devices, so
no cross-host traffic; only process 0 logs.
"""

from __future__ import annotations

import os

import jax

from csa_jax.core.config import Model, ModelConfig
from csa_jax.data import ground_truth
from csa_jax.evaluation.evaluate import evaluate, mean_ap_table


class Evaluator:
  """``evaluator(params, model_cfg) -> {dataset: {'first_round', 'csa', 'K'}}`` (mAP, percent).

  Args:
    sets: {dataset: (features path, gnd path)}.
    K: candidates re-ranked per query (at most each database's size).
    batch: queries per re-ranking call.
    every: evaluate every this many epochs (read by the training loop).
  """

  def __init__(self, sets: dict, K: int, batch: int, every: int):
    self.sets, self.K, self.batch, self.every = sets, K, batch, every
    self.devices = jax.local_devices()
    self._loaded = {}

  def _load(self, name: str):
    if name not in self._loaded:
      self._loaded[name] = ground_truth.load_test_set(*self.sets[name])
    return self._loaded[name]

  def __call__(self, params, model_cfg: ModelConfig) -> dict:
    """Evaluates ``params`` on every test set.

    Args:
      params: the current parameters (host or device arrays).
      model_cfg: their ``ModelConfig``.

    Returns:
      {dataset: {'first_round': {'easy', 'medium', 'hard'}, 'csa': {...}, 'K': int}}, mAP in
      percent as ``mean_ap_percent`` rounds it.
    """
    out = {}
    for name in self.sets:
      q_QxC, db_NxC, gnd = self._load(name)
      res = evaluate(q_QxC, db_NxC, gnd, Model(params, model_cfg), K=min(self.K, len(db_NxC)),
                     batch_size=self.batch, devices=self.devices, source=self.sets[name][0])
      out[name] = {**mean_ap_table(res), "K": res["info"]["K"]}
    return out


def make_evaluator(config, workdir: str) -> Evaluator:
  """The evaluator the config's ``eval`` group describes.

  Args:
    config: a training config; ``eval.datasets``, ``eval.features`` and ``eval.gnd`` (paths
      with ``{ds}``) under ``eval.root`` (default ``data.root``), ``eval.K``, ``eval.batch``,
      ``eval.every_epochs``.
    workdir: the run's directory (unused: the test sets are read where they are).

  Returns:
    An ``Evaluator``.
  """
  del workdir
  ec = config.eval
  root = ec.get("root") or config.data.get("root") or ""
  sets = {}
  for ds in ec.datasets:
    feats = os.path.join(root, ec.features.format(ds=ds))
    gnd = os.path.join(root, ec.gnd.format(ds=ds))
    sets[ds] = (feats, gnd)
  return Evaluator(sets, ec.K, ec.batch, ec.every_epochs)
