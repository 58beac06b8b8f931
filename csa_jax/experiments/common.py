"""What every study of ``csa-jax experiment`` shares: data, training runs, evaluation, output.

- Data (``Bench``): the docs/method.md section 6 layout under a root, read through ``data_io`` whether it is
  real data or the synthetic benchmark written there (one code path). On the synthetic benchmark,
  extra descriptor sets ("backbones") are derived from the generator's output for cross-feature
  testing: each one is a fixed function of the same images (a random projection plus noise, a
  signed power), applied alike to training, database and query descriptors.
- Runs (``Context.train``): a training run is keyed by the hash of its full config and training
  set, under ``<out>/runs/<key>``; a finished run is reused and an interrupted one resumed, so
  studies sharing a model (the default config appears in three ablation axes, the seed study and
  the baselines) train it once, and a killed study continues where it stopped.
- Evaluation: exact first-round search, CSA re-ranking of the top-K, revisited mAP (percent).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time

import jax
import ml_collections
import numpy as np

from csa_jax.retrieval import baselines
from csa_jax import configs
from csa_jax.data import readers as data_io
from csa_jax.interop import export
from csa_jax.data import neighbors
from csa_jax.data import train_set as pipeline
from csa_jax.data import synthetic
from csa_jax.errors import InputError, fail
from csa_jax.evaluation.revisited import revisited_map
from csa_jax.fileio import atomic_path, save_npz, write_json
from csa_jax.data.npyio import load_npz

PROTOCOLS = ("easy", "medium", "hard")
RANK_DEPTH = 10_000  # ranks kept for mAP beyond the re-ranked top-K (the whole db when smaller)
_EXTS = (".pkl", ".pickle", ".npz", ".npy", ".json")

# Derived synthetic descriptor sets: name -> (output size as a fraction of C, noise, power).
SYNTH_BACKBONES = {
    synthetic.FEATURES: None,             # the generator's own descriptors
    "synth-proj": (0.75, 0.35, 1.0),      # smaller random projection, extra noise
    "synth-pow": (1.5, 0.2, 0.5),         # wider projection, signed square root
}


def log(msg: str) -> None:
  print(f"experiment: {msg}", file=sys.stderr, flush=True)


def fmt_s(seconds: float) -> str:
  s = int(round(seconds))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# -- data ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class TestSet:
  """Queries, database and revisited ground truth of one test dataset."""

  __test__ = False  # not a pytest class, despite the name
  q_QxC: np.ndarray
  db_NxC: np.ndarray
  gnd: list


def find_file(root: str, rel: str) -> str:
  """``root/rel`` with whichever extension exists (.pkl, .npz, .npy, .json)."""
  base = os.path.join(root, rel)
  for ext in _EXTS:
    if os.path.exists(base + ext):
      return base + ext
  raise fail(base + ".*", "file", f"one of {', '.join(_EXTS)} (docs/method.md section 6 layout)",
             "no such file")


class Bench:
  """Descriptor sets of one data root, loaded on first use.

  features: descriptor set names (train/<f>.*, test/<ds>/<f>.*); datasets: test set names.
  """

  def __init__(self, root: str, features: list[str], datasets: list[str], synthetic_cfg=None):
    self.root, self.features, self.datasets = root, list(features), list(datasets)
    self.synthetic_cfg = synthetic_cfg
    self._ann, self._train, self._tests, self._sets = None, {}, {}, {}

  def describe(self) -> dict:
    d = {"root": self.root, "features": self.features, "datasets": self.datasets}
    if self.synthetic_cfg is not None:
      d["synthetic"] = dataclasses.asdict(self.synthetic_cfg)
    return d

  def clusters(self) -> np.ndarray:
    if self._ann is None:
      self._ann = data_io.load_annotations(find_file(self.root,
                                                     "annotations/retrieval-SfM-120k"))
    return self._ann["train"]["cluster"]

  def train_feats(self, feature: str) -> np.ndarray:
    if feature not in self._train:
      n = len(self.clusters())
      self._train[feature] = data_io.load_descriptors(
          find_file(self.root, f"train/{feature}"), key="train", n=n)
    return self._train[feature]

  def test_set(self, feature: str, ds: str) -> TestSet:
    if (feature, ds) not in self._tests:
      q, db, gnd = data_io.load_test_set(find_file(self.root, f"test/{ds}/{feature}"),
                                         find_file(self.root, f"annotations/{ds}/gnd_{ds}"))
      self._tests[feature, ds] = TestSet(q, db, gnd)
    return self._tests[feature, ds]

  def train_set(self, feature: str, K: int, L: int, cache_dir: str,
                rows: np.ndarray | None = None) -> pipeline.TrainSet:
    """Training samples of one descriptor set (optionally only ``rows`` of it), neighbours
    cached on disk by content hash."""
    key = (feature, K, L, None if rows is None else hashlib.sha1(rows.tobytes()).hexdigest())
    if key not in self._sets:
      f, c = self.train_feats(feature), self.clusters()
      if rows is not None:
        f, c = f[rows], c[rows]
      if max(K, L) > len(f):
        raise fail(self.root, "train", f"at least max(K, L) = {max(K, L)} training images",
                   f"{len(f)}")
      nb, _ = neighbors.load_or_compute(f, K, L, cache_dir=cache_dir, name=feature,
                                        progress=False)
      self._sets[key] = pipeline.TrainSet(np.ascontiguousarray(f), np.asarray(c, np.int32), nb,
                                          [(feature, 0, len(f))])
    return self._sets[key]


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _backbone(x, spec, rng, proj):
  _, noise, power = spec
  y = x @ proj + noise * rng.normal(size=(len(x), proj.shape[1])) / np.sqrt(proj.shape[1])
  return _unit(np.sign(y) * np.abs(y) ** power)


def write_synthetic(root: str, cfg: synthetic.SynthConfig) -> Bench:
  """Writes the synthetic benchmark and its derived backbones under ``root``; their Bench."""
  p = synthetic.write_benchmark(root, cfg)
  train = load_npz(p["train_features"])
  test = load_npz(p["test_features"])
  c = train["train"].shape[1]
  for b, (name, spec) in enumerate(SYNTH_BACKBONES.items()):
    if spec is None:
      continue
    rng = np.random.default_rng([cfg.seed, 1000 + b])
    width = max(8, int(round(spec[0] * c)))
    proj = rng.normal(size=(c, width)) / np.sqrt(width)
    save_npz(os.path.join(root, "train", f"{name}.npz"),
             **{k: _backbone(train[k], spec, rng, proj) for k in ("train", "val")})
    save_npz(os.path.join(root, "test", synthetic.DATASET, f"{name}.npz"),
             **{k: _backbone(test[k], spec, rng, proj) for k in ("db", "query")})
  return Bench(root, list(SYNTH_BACKBONES), [synthetic.DATASET], cfg)


# -- runs -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  params: dict
  cfg: object  # ModelConfig
  workdir: str
  train_s: float  # seconds its training took (when reused: as recorded by the run that trained)
  reused: bool


def _set(config, key: str, value) -> None:
  configs.set_override(config, key, json.dumps(value) if isinstance(value, (list, tuple))
                         else str(value), source="experiment")


@dataclasses.dataclass
class Context:
  """One study's settings: where to write, the base training config, the data, test-time K."""

  name: str
  out: str
  config: ml_collections.ConfigDict  # base training config (overrides applied, unfrozen)
  bench: Bench
  K: int  # test-time re-ranking depth
  feature: str  # the default descriptor set
  size: str = "default"
  progress: bool = True
  model_path: str | None = None

  def path(self, *parts) -> str:
    return os.path.join(self.out, *parts)

  def make_config(self, overrides: dict | None = None) -> ml_collections.ConfigDict:
    config = copy.deepcopy(self.config)
    for k, v in (overrides or {}).items():
      _set(config, k, v)
    return config

  def train(self, overrides: dict | None = None, feature: str | None = None, rows=None,
            keep_checkpoints: bool = False, label: str = "") -> Run:
    """Trains (or reuses) the model of the base config with ``overrides`` on ``feature``."""
    feature = feature or self.feature
    config = self.make_config(overrides)
    if not keep_checkpoints:
      _set(config, "checkpoint.every_steps", 1 << 30)  # only the final step
      _set(config, "checkpoint.keep", 1)
    if "eval" in config and "every_epochs" in config.eval:
      _set(config, "eval.every_epochs", 0)
    K, L = config.data.K, config.model.anchors
    # A run is its config and its training data's content (not where the data lives), so
    # the same images under another root, or another --features list, reuse it.
    rows_ = slice(None) if rows is None else np.asarray(rows)
    ident = {"config": configs.as_plain(config), "feature": feature,
             "train_feats": neighbors.content_hash(self.bench.train_feats(feature)[rows_]),
             "clusters": hashlib.sha1(np.ascontiguousarray(
                 self.bench.clusters()[rows_], np.int64).tobytes()).hexdigest()}
    ident["config"]["data"] = {k: v for k, v in ident["config"]["data"].items()
                               if k not in ("root", "cache_dir")}
    key = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    workdir = self.path("runs", key)
    done = os.path.join(workdir, export.EXPORT_NAME)
    record = os.path.join(workdir, "run.json")
    if os.path.exists(done) and os.path.exists(record):
      params, cfg = export.load_model(done)
      with open(record) as f:
        train_s = float(json.load(f).get("train_s", 0.0))
      log(f"{label or key}: reusing the finished run {workdir}")
      return Run(params, cfg, workdir, train_s, True)
    from csa_jax.train.loop import train  # noqa: PLC0415  (heavy; only studies that train need it)
    ts = self.bench.train_set(feature, K, L, self.path("cache"), rows)
    log(f"{label or key}: training on {ts.num_samples} samples of {feature} -> {workdir}")
    t0 = time.perf_counter()
    config.lock()
    res = train(config, workdir, resume=True, train_set=ts, progress=self.progress)
    dt = time.perf_counter() - t0
    write_json(os.path.join(workdir, "run.json"), dict(ident, train_s=dt, label=label))
    if not keep_checkpoints:  # the export holds the final parameters
      shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    return Run(res.params, res.model_cfg, workdir, dt, False)

  def default_model(self) -> Run:
    """``--model`` when given, else the base config trained on the default descriptors."""
    if self.model_path:
      params, cfg = export.load_model(self.model_path)
      return Run(params, cfg, self.model_path, 0.0, True)
    return self.train(label="default model")


# -- evaluation -----------------------------------------------------------------------------------


def rank_depth(n_db: int, K: int, L: int) -> int:
  return min(n_db, max(K, L - 1, RANK_DEPTH))


def first_round(ts: TestSet, T: int) -> np.ndarray:
  return np.asarray(baselines.search(ts.q_QxC, ts.db_NxC, T))


def mean_ap(top_QxT, gnd) -> dict:
  """Revisited mAP in percent: {'easy', 'medium', 'hard'}."""
  r = revisited_map(np.asarray(top_QxT).T, gnd)
  return {p: round(float(r[p]["map"]) * 100, 4) for p in PROTOCOLS}


def csa_top(run: Run, ts: TestSet, top_QxT, K: int) -> np.ndarray:
  """The ranking after CSA re-ranks the top-K of ``top_QxT``."""
  from csa_jax.retrieval.rerank import csa_rerank  # noqa: PLC0415
  L = run.cfg.anchors
  K = min(K, top_QxT.shape[1])
  if L - 1 > top_QxT.shape[1]:
    raise fail("experiment", "L", f"at most {top_QxT.shape[1] + 1} anchors for this database",
               f"the model's L = {L}")
  return np.asarray(csa_rerank(run.params, run.cfg, ts.q_QxC, ts.db_NxC, top_QxT, K, L))


def evaluate(run: Run, ts: TestSet, K: int, db_NxC=None) -> dict:
  """{'first_round': mAP, 'csa': mAP} (percent, E/M/H) of one test set; ``db_NxC`` replaces the
  database descriptors (e.g. after alpha-DBA)."""
  if db_NxC is not None:
    ts = TestSet(ts.q_QxC, db_NxC, ts.gnd)
  top = first_round(ts, rank_depth(len(ts.db_NxC), K, run.cfg.anchors))
  return {"first_round": mean_ap(top, ts.gnd), "csa": mean_ap(csa_top(run, ts, top, K), ts.gnd)}


def evaluate_all(ctx: Context, run: Run, feature: str | None = None, K: int | None = None) -> dict:
  """``evaluate`` on every test dataset of ``feature``: {dataset: {...}}."""
  feature = feature or ctx.feature
  return {ds: evaluate(run, ctx.bench.test_set(feature, ds), K or ctx.K)
          for ds in ctx.bench.datasets}


# -- output -------------------------------------------------------------------------------------


def pyplot():
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def save_figure(fig, path: str) -> None:
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
  pyplot().close(fig)


def finish(ctx: Context, result: dict, fig, t0: float) -> dict:
  """Writes ``<out>/<name>.json`` (with context and wall time) and ``<out>/<name>.png``."""
  result = {"experiment": ctx.name, "size": ctx.size, "data": ctx.bench.describe(),
            "feature": ctx.feature, "test_K": ctx.K, "base_config": configs.as_plain(ctx.config),
            "devices": f"{jax.default_backend()} x{jax.device_count()}",
            **result, "seconds": round(time.perf_counter() - t0, 1)}
  write_json(ctx.path(f"{ctx.name}.json"), result)
  save_figure(fig, ctx.path(f"{ctx.name}.png"))
  log(f"{ctx.name}: wrote {ctx.path(ctx.name + '.json')} and .png in {fmt_s(result['seconds'])}")
  return result


def check_positive(name: str, values, source: str = "command line") -> list:
  if not values or any(v <= 0 for v in values):
    raise InputError(f"{source}: {name}: expected positive values, found {values}")
  return list(values)
