"""A built-in landmark benchmark with the premise of CSA, written in the real data layout.

Every landmark is a chain of "parts" (directions of descriptor space); a photo taken from viewpoint
t in [0, P-1] sees the parts near t, so near viewpoints share parts and far ones share almost none:
their direct similarity is little above that of unrelated photos, but the photos in between link
them, which shared neighbours reveal and a plain cosine ranking does not. Landmarks come in
"styles" (shared directions: similar architecture), so unrelated landmarks of one style are close;
a direction common to all photos and per-photo noise complete the model. The training split is
landmarks (one cluster each) and single unrelated photos (a cluster each), as rSfM120k's clusters
are its 3D models; the test db adds unrelated "minor" landmarks and occluded photos (3x noise).

Files follow docs/method.md section 6 in its .npz/.json form, so the file readers read them like
real data:

  <root>/annotations/retrieval-SfM-120k.json  {'train'|'val': {'cids','cluster','qidxs','pidxs'}}
  <root>/train/synth-gem.npz                  {'train': (n, C), 'val': (m, C)}
  <root>/annotations/synth5k/gnd_synth5k.json {'imlist','qimlist','gnd': [{'bbx','easy',...}]}
  <root>/test/synth5k/synth-gem.npz           {'db': (n, C), 'query': (q, C)}

Test ground truth follows the revisited protocol: a query (a new photo of a test landmark) has as
easy positives the photos of its landmark from near viewpoints (|t - t_query| <= easy_span), as
hard ones those from far viewpoints, and as junk the occluded ones.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from csa_jax.core.normalize import l2_normalize
from csa_jax.fileio import save_npz, write_json

FEATURES = "synth-gem"
DATASET = "synth5k"


@dataclasses.dataclass(frozen=True)
class SynthConfig:
  """Sizes and difficulty of the benchmark (defaults: the demo's)."""

  dim: int = 128                 # C
  parts: int = 10                # P, parts per landmark chain (viewpoints span [0, P-1])
  part_width: float = 1.2        # viewpoint t sees part k with weight exp(-(k-t)^2 / 2 width^2)
  styles: int = 8                # groups of similar-looking landmarks
  w_common: float = 0.45         # weight of the direction shared by every photo
  w_style: float = 0.45          # weight of the landmark's style direction
  w_ident: float = 0.30          # weight of the landmark's own direction (all its photos)
  noise: float = 0.55            # per-photo noise weight
  occluded: float = 0.08         # fraction of photos with 3x noise (junk at test time)
  # training split: landmarks x photos (one cluster each), plus single unrelated photos
  train_landmarks: int = 120
  train_photos: int = 24
  train_singles: int = 1500
  val_landmarks: int = 20
  val_singles: int = 200
  # test db: landmarks with queries, unrelated "minor" landmarks (photos // 3 each), singles
  test_landmarks: int = 14
  test_photos: int = 30
  queries_per_landmark: int = 5
  test_minor: int = 80
  test_singles: int = 1500
  easy_span: float = 1.5         # |t - t_query| <= easy_span: easy, else hard
  seed: int = 0

  def replace(self, **kw) -> "SynthConfig":
    return dataclasses.replace(self, **kw)


class _World:
  """The shared directions (common, styles); landmarks are drawn from it one by one."""

  def __init__(self, cfg: SynthConfig, rng: np.random.Generator):
    self.cfg, self.rng = cfg, rng
    self.common = l2_normalize(rng.normal(size=cfg.dim))
    self.styles = l2_normalize(rng.normal(size=(cfg.styles, cfg.dim)))

  def landmark(self):
    """(style, ident, parts_PxC) of a new landmark."""
    c, rng = self.cfg, self.rng
    return (int(rng.integers(c.styles)), l2_normalize(rng.normal(size=c.dim)),
            l2_normalize(rng.normal(size=(c.parts, c.dim))))

  def photos(self, lm, t_V, occluded_V=None):
    """Unit descriptors (V, C) of landmark ``lm`` seen from viewpoints ``t_V``."""
    c, rng = self.cfg, self.rng
    style, ident, parts = lm
    k = np.arange(c.parts)
    w = np.exp(-(k[None] - t_V[:, None]) ** 2 / (2 * c.part_width ** 2))
    view = l2_normalize(w / np.linalg.norm(w, axis=1, keepdims=True) @ parts)
    x = (c.w_common * self.common + c.w_style * self.styles[style] + c.w_ident * ident
         + view)
    noise = c.noise * np.ones(len(t_V))
    if occluded_V is not None:
      noise = np.where(occluded_V, 3 * c.noise, noise)
    x = l2_normalize(x) + noise[:, None] * rng.normal(size=x.shape) / np.sqrt(c.dim)
    return l2_normalize(x)  # float32

  def distractors(self, n):
    """Unrelated single photos: a style, the common direction, their own content."""
    c, rng = self.cfg, self.rng
    own = l2_normalize(rng.normal(size=(n, c.dim)))
    x = (c.w_common * self.common + c.w_style * self.styles[rng.integers(c.styles, size=n)]
         + own)
    x = l2_normalize(x) + c.noise * rng.normal(size=x.shape) / np.sqrt(c.dim)
    return l2_normalize(x)  # float32

  def viewpoints(self, n):
    return self.rng.uniform(0, self.cfg.parts - 1, size=n)


def _split(world: _World, landmarks: int, photos: int, singles: int):
  """(feats, clusters): landmark photos (cluster = landmark), then single photos (a cluster each).
  """
  feats, clusters = [], []
  for i in range(landmarks):
    feats.append(world.photos(world.landmark(), world.viewpoints(photos)))
    clusters.append(np.full(photos, i))
  feats.append(world.distractors(singles))
  clusters.append(landmarks + np.arange(singles))
  return np.concatenate(feats), np.concatenate(clusters).astype(np.int64)


def _pairs(clusters, rng):
  """qidxs/pidxs as in rSfM120k (a query and a positive of its cluster), for completeness."""
  q, p = [], []
  for c in np.unique(clusters):
    members = np.nonzero(clusters == c)[0]
    if len(members) > 1:
      q.append(int(members[0]))
      p.append(int(rng.choice(members[1:])))
  return q, p


def generate(cfg: SynthConfig = SynthConfig()) -> dict:
  """The benchmark in memory, deterministic in ``cfg`` (seed included).

  Args:
    cfg: sizes, difficulty and seed.

  Returns:
    {'annotations', 'train_feats', 'test_feats', 'gnd'}: the contents of the files
    ``write_benchmark`` writes (descriptors float32 unit rows).
  """
  rng = np.random.default_rng(cfg.seed)
  world = _World(cfg, rng)
  tr_x, tr_c = _split(world, cfg.train_landmarks, cfg.train_photos, cfg.train_singles)
  va_x, va_c = _split(world, cfg.val_landmarks, cfg.train_photos, cfg.val_singles)
  ann = {}
  for split, c in (("train", tr_c), ("val", va_c)):
    q, p = _pairs(c, rng)
    ann[split] = {"cids": [f"{split}{i:06d}" for i in range(len(c))], "cluster": c.tolist(),
                  "qidxs": q, "pidxs": p}

  db, queries, gnd_info = [], [], []
  for i in range(cfg.test_landmarks):
    lm, t = world.landmark(), world.viewpoints(cfg.test_photos)
    occ = rng.random(cfg.test_photos) < cfg.occluded
    db.append(world.photos(lm, t, occ))
    idx = i * cfg.test_photos + np.arange(cfg.test_photos)
    tq = world.viewpoints(cfg.queries_per_landmark)
    queries.append(world.photos(lm, tq))  # queries are new photos, never occluded
    for t0 in tq:
      near = np.abs(t - t0) <= cfg.easy_span
      gnd_info.append((idx[near & ~occ], idx[~near & ~occ], idx[occ]))
  for _ in range(cfg.test_minor):
    db.append(world.photos(world.landmark(), world.viewpoints(max(cfg.test_photos // 3, 1))))
  db.append(world.distractors(cfg.test_singles))
  db = np.concatenate(db)
  n_db = len(db)
  # Shuffle the db so a landmark's photos are not contiguous (nothing may rely on index order).
  perm = rng.permutation(n_db)
  inv = np.argsort(perm)
  gnd = [{"bbx": [0.0, 0.0, 1.0, 1.0], "easy": sorted(inv[e].tolist()),
          "hard": sorted(inv[h].tolist()), "junk": sorted(inv[j].tolist())}
         for e, h, j in gnd_info]
  test = {"db": db[perm], "query": np.concatenate(queries)}
  gnd_file = {"imlist": [f"db{i:06d}" for i in range(n_db)],
              "qimlist": [f"q{i:04d}" for i in range(len(gnd))], "gnd": gnd}
  return {"annotations": ann, "train_feats": {"train": tr_x, "val": va_x}, "test_feats": test,
          "gnd": gnd_file}


def paths(root) -> dict:
  """Where ``write_benchmark`` puts each file under ``root``.

  Args:
    root: the data root.

  Returns:
    {'annotations', 'train_features', 'gnd', 'test_features'}: file paths.
  """
  root = os.fspath(root)
  return {
      "annotations": os.path.join(root, "annotations", "retrieval-SfM-120k.json"),
      "train_features": os.path.join(root, "train", f"{FEATURES}.npz"),
      "gnd": os.path.join(root, "annotations", DATASET, f"gnd_{DATASET}.json"),
      "test_features": os.path.join(root, "test", DATASET, f"{FEATURES}.npz"),
  }


def write_benchmark(root, cfg: SynthConfig = SynthConfig()) -> dict:
  """Generates the benchmark and writes it under ``root``, each file atomically.

  Args:
    root: the data root (created as needed).
    cfg: sizes, difficulty and seed.

  Returns:
    The file paths, as ``paths(root)``.
  """
  data = generate(cfg)
  p = paths(root)
  write_json(p["annotations"], data["annotations"])
  save_npz(p["train_features"], **data["train_feats"])
  write_json(p["gnd"], data["gnd"])
  save_npz(p["test_features"], **data["test_feats"])
  return p
