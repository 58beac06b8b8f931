"""The studies' training runs, cached: each trained once, reused by every study that needs it.

A run is keyed by the hash of its full config and its training data's content, under
``<out>/runs/<key>``; a finished run is reused and an interrupted one resumed, so studies sharing
a model (the default config appears in three ablation axes, the seed study and the baselines)
train it once, and a killed study continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time

import numpy as np

from csa_jax import configs
from csa_jax.experiments.context import Context, set_value
from csa_jax.fileio import write_json
from csa_jax.interop import export
from csa_jax.retrieval import neighbors

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
  """A trained model and where it came from."""

  params: dict
  cfg: object  # ModelConfig
  workdir: str
  train_s: float  # seconds its training took (when reused: as recorded by the run that trained)
  reused: bool


def train(ctx: Context, overrides: dict | None = None, feature: str | None = None, rows=None,
          keep_checkpoints: bool = False, label: str = "") -> Run:
  """Trains (or reuses) the model of the study's base config with ``overrides``.

  Args:
    ctx: the study.
    overrides: {dotted config key: value} applied to the base config.
    feature: the descriptor set to train on (default the study's).
    rows: optional training rows to keep (e.g. without held-out clusters).
    keep_checkpoints: keep one checkpoint per ``checkpoint.every_steps`` (else the final
      parameters only, in the export).
    label: what the log lines call this run.

  Returns:
    The ``Run``.
  """
  feature = feature or ctx.feature
  config = ctx.make_config(overrides)
  if not keep_checkpoints:
    set_value(config, "checkpoint.every_steps", 1 << 30)  # only the final step
    set_value(config, "checkpoint.keep", 1)
  if "eval" in config and "every_epochs" in config.eval:
    set_value(config, "eval.every_epochs", 0)
  K, L = config.data.K, config.model.anchors
  # A run is its config and its training data's content (not where the data lives), so the same
  # images under another root, or another --features list, reuse it.
  rows_ = slice(None) if rows is None else np.asarray(rows)
  ident = {"config": configs.as_plain(config), "feature": feature,
           "train_feats": neighbors.content_hash(ctx.data.train_feats(feature)[rows_]),
           "clusters": hashlib.sha1(np.ascontiguousarray(
               ctx.data.clusters()[rows_], np.int64).tobytes()).hexdigest()}
  ident["config"]["data"] = {k: v for k, v in ident["config"]["data"].items()
                             if k not in ("root", "cache_dir")}
  key = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
  workdir = ctx.path("runs", key)
  done = os.path.join(workdir, export.EXPORT_NAME)
  # Not run.json: that is the training loop's record of every start, kept beside this one.
  record = os.path.join(workdir, "experiment_run.json")
  if os.path.exists(done) and os.path.exists(record):
    params, cfg = export.load_model(done)
    with open(record) as f:
      train_s = float(json.load(f).get("train_s", 0.0))
    log.info("experiment: %s: reusing the finished run %s", label or key, workdir)
    return Run(params, cfg, workdir, train_s, True)
  from csa_jax.train import loop  # noqa: PLC0415  (heavy; only when training)
  train_data = ctx.data.train_set(feature, K, L, ctx.path("cache"), rows)
  log.info("experiment: %s: training on %d samples of %s -> %s", label or key,
           train_data.num_samples, feature, workdir)
  t0 = time.perf_counter()
  config.lock()
  res = loop.train(config, workdir, resume=True, train_set=train_data, progress=ctx.progress)
  dt = time.perf_counter() - t0
  write_json(record, dict(ident, train_s=dt, label=label))
  if not keep_checkpoints:  # the export holds the final parameters
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
  return Run(res.params, res.model_cfg, workdir, dt, False)


def default_model(ctx: Context) -> Run:
  """The model of the studies that take one: ``ctx.model_path`` when given, else the base
  config trained on the default descriptors.

  Args:
    ctx: the study.

  Returns:
    The ``Run`` (``reused`` and no training time for a given model).
  """
  if ctx.model_path:
    params, cfg = export.load_model(ctx.model_path)
    return Run(params, cfg, ctx.model_path, 0.0, True)
  return train(ctx, label="default model")
