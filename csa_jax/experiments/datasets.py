"""The studies' data: the descriptor sets and test sets of one data root (``StudyData``).

The docs/method.md section 6 layout under a root is read through the file readers whether it is
real data or the synthetic benchmark written there (one code path). On the synthetic benchmark,
extra descriptor sets ("backbones") are derived from the generator's output for cross-feature
testing: each one is a fixed function of the same images (a random projection plus noise, a
signed power), applied alike to training, database and query descriptors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from csa_jax.core.normalize import l2_normalize
from csa_jax.data import annotations, descriptors, ground_truth, layout, synthetic
from csa_jax.errors import fail
from csa_jax.fileio import save_npz
from csa_jax.formats.npyio import load_npz
from csa_jax.retrieval import neighbors
from csa_jax.train import train_set as pipeline

# Derived synthetic descriptor sets: name -> (output size as a fraction of C, noise, power).
SYNTH_BACKBONES = {
    synthetic.FEATURES: None,             # the generator's own descriptors
    "synth-proj": (0.75, 0.35, 1.0),      # smaller random projection, extra noise
    "synth-pow": (1.5, 0.2, 0.5),         # wider projection, signed square root
}


@dataclasses.dataclass
class TestSet:
  """Queries, database and revisited ground truth of one test dataset."""

  __test__ = False  # not a pytest class, despite the name
  q_QxC: np.ndarray
  db_NxC: np.ndarray
  gnd: list


class StudyData:
  """The descriptor sets and test sets of one data root, loaded on first use.

  Args:
    root: the data root (docs/method.md section 6 layout).
    features: descriptor set names (train/<f>.*, test/<ds>/<f>.*); the first is the default.
    datasets: test set names.
    synthetic_cfg: the ``SynthConfig`` that wrote the root, if it is the synthetic benchmark.
  """

  def __init__(self, root: str, features: list[str], datasets: list[str], synthetic_cfg=None):
    self.root, self.features, self.datasets = root, list(features), list(datasets)
    self.synthetic_cfg = synthetic_cfg
    self._ann, self._train, self._tests, self._sets = None, {}, {}, {}

  def describe(self) -> dict:
    """What the study's JSON records about its data."""
    d = {"root": self.root, "features": self.features, "datasets": self.datasets}
    if self.synthetic_cfg is not None:
      d["synthetic"] = dataclasses.asdict(self.synthetic_cfg)
    return d

  def clusters(self) -> np.ndarray:
    """(n,) cluster id (landmark) of every training image."""
    if self._ann is None:
      self._ann = annotations.load_annotations(layout.annotations_file(self.root))
    return self._ann["train"]["cluster"]

  def train_feats(self, feature: str) -> np.ndarray:
    """(n, C) training descriptors of one set."""
    if feature not in self._train:
      n = len(self.clusters())
      self._train[feature] = descriptors.load_descriptors(
          layout.train_file(self.root, feature), key="train", n=n)
    return self._train[feature]

  def test_set(self, feature: str, ds: str) -> TestSet:
    """One test dataset with one descriptor set."""
    if (feature, ds) not in self._tests:
      q, db, gnd = ground_truth.load_test_set(layout.test_features_file(self.root, ds, feature),
                                              layout.gnd_file(self.root, ds))
      self._tests[feature, ds] = TestSet(q, db, gnd)
    return self._tests[feature, ds]

  def train_set(self, feature: str, K: int, L: int, cache_dir: str,
                rows: np.ndarray | None = None) -> pipeline.TrainSet:
    """Training samples of one descriptor set, neighbours cached on disk by content hash.

    Args:
      feature: descriptor set name.
      K: tokens per sample.
      L: anchors per sample.
      cache_dir: the neighbour cache.
      rows: optional training rows to keep (e.g. without held-out clusters).

    Returns:
      The ``TrainSet``.
    """
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


def _backbone(x, spec, rng, proj):
  _, noise, power = spec
  y = x @ proj + noise * rng.normal(size=(len(x), proj.shape[1])) / np.sqrt(proj.shape[1])
  return l2_normalize(np.sign(y) * np.abs(y) ** power)


def write_synthetic(root: str, cfg: synthetic.SynthConfig) -> StudyData:
  """Writes the synthetic benchmark and its derived backbones under ``root``.

  Args:
    root: the directory to write (the docs/method.md section 6 layout).
    cfg: the benchmark's size and seed.

  Returns:
    Its ``StudyData``: every ``SYNTH_BACKBONES`` set, the synthetic test dataset.
  """
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
  return StudyData(root, list(SYNTH_BACKBONES), [synthetic.DATASET], cfg)
