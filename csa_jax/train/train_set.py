"""The training input pipeline: the host only chooses sample indices (docs/method.md section 2).

Descriptors, neighbour lists and cluster ids are put on device once; each step the host hands the
jitted step a batch of query indices and ``affinity.training_affinity`` builds the (B, K, L)
affinities and targets there. The order is a pure function of (seed, epoch), and in a multi-host
run process p takes the p-th contiguous slice of every global batch, so all processes agree on
the global batch without talking to each other. ``load_train_data`` builds the set a training
config describes (files, a TFDS copy, or random data).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from csa_jax.core.normalize import l2_normalize
from csa_jax.data import annotations, descriptors, layout
from csa_jax.errors import InputError, fail
from csa_jax.retrieval import neighbors


@dataclasses.dataclass
class TrainSet:
  """Training samples, one per image of every descriptor set.

  feats_NxC: float32, L2-normalised, the descriptor sets stacked; clusters_N: int32 cluster id of
  every row (each set repeats the annotation's labels); nbrs_NxM: int32 neighbours of every row
  inside its own set, as indices into the stacked matrix (row i's first neighbour is i);
  sets: (name, start, stop) rows of each descriptor set.
  """

  feats_NxC: np.ndarray
  clusters_N: np.ndarray
  nbrs_NxM: np.ndarray
  sets: list[tuple[str, int, int]]

  @property
  def num_samples(self) -> int:
    return len(self.feats_NxC)


def load_train_set(descriptor_paths: list[str], annotations_path: str, K: int, L: int,
                   cache_dir=None, split: str = "train") -> TrainSet:
  """Reads the annotations and every descriptor set, and attaches (cached) neighbour lists.

  Args:
    descriptor_paths: one descriptor file per set; several stack several sets (the augmented
      setting): each set gets neighbours computed inside itself, offset into the stacked matrix,
      and the same cluster labels.
    annotations_path: the retrieval-SfM-120k annotations (pickle or its converted form).
    K: tokens per sample.
    L: anchors per sample.
    cache_dir: where neighbour lists are cached (``neighbors.load_or_compute``); None: no cache.
    split: the annotations' split to train on.

  Returns:
    A ``TrainSet``. Bad files or sizes raise ``InputError``.
  """
  if not descriptor_paths:
    raise fail("<arguments>", "descriptor_paths", "at least one descriptor file", "none")
  ann = annotations.load_annotations(annotations_path)
  if split not in ann:
    raise fail(os.fspath(annotations_path), split, f"a '{split}' split",
               f"only {sorted(ann)}")
  clusters = ann[split]["cluster"]
  n = len(clusters)
  if max(K, L) > n:
    raise fail(os.fspath(annotations_path), f"{split}.cluster",
               f"at least max(K, L) = {max(K, L)} images", f"{n}")
  feats, nbrs, sets, dim = [], [], [], None
  for path in descriptor_paths:
    f = descriptors.load_descriptors(path, key=split, n=n, dim=dim)
    dim = f.shape[1]
    start = sum(len(x) for x in feats)
    nb, _ = neighbors.load_or_compute(f, K, L, cache_dir=cache_dir,
                                      name=layout.feature_name(path))
    feats.append(f)
    nbrs.append(nb + np.int32(start))
    sets.append((layout.feature_name(path), start, start + n))
  return TrainSet(feats_NxC=np.concatenate(feats), clusters_N=np.tile(clusters, len(feats)),
                  nbrs_NxM=np.concatenate(nbrs), sets=sets)


def random_train_set(num_samples: int, num_clusters: int, dim: int, M: int,
                     seed: int) -> TrainSet:
  """A seeded, in-memory training set of clustered unit descriptors (tests, smoke runs, benchmarks).

  Args:
    num_samples: images N.
    num_clusters: landmarks; each image is its cluster's centre plus noise.
    dim: descriptor size C.
    M: neighbours per image, max(K, L).
    seed: the numpy seed; the same arguments give the same set.

  Returns:
    A ``TrainSet`` with exact neighbour lists (as ``neighbors.top_neighbors`` defines them).
  """
  rng = np.random.default_rng(seed)
  clusters = rng.integers(0, num_clusters, num_samples).astype(np.int32)
  centers = rng.normal(size=(num_clusters, dim))
  feats = l2_normalize(centers[clusters] + 1.5 * rng.normal(size=(num_samples, dim)), axis=1)
  # Stable sort on -score with self forced first: the definition of neighbors.top_neighbors.
  scores = feats @ feats.T
  np.fill_diagonal(scores, np.inf)
  nbrs = np.argsort(-scores, axis=1, kind="stable")[:, :M].astype(np.int32)
  return TrainSet(feats, clusters, nbrs, [("random", 0, num_samples)])


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
  """The epoch's sample order, a pure function of (seed, epoch): a resumed run replays it exactly.

  Args:
    num_samples: training samples.
    seed: the run's seed.
    epoch: 0-based epoch.

  Returns:
    int32 permutation of range(num_samples).
  """
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, 0x5A])))
  return rng.permutation(num_samples).astype(np.int32)


def steps_per_epoch(num_samples: int, global_batch: int) -> int:
  """Full global batches per epoch; the remainder is dropped, as the original loader does.

  Args:
    num_samples: training samples.
    global_batch: samples per step, >= 1.

  Returns:
    ``num_samples // global_batch``.
  """
  if global_batch < 1:
    raise ValueError(f"steps_per_epoch: global_batch must be >= 1, got {global_batch}")
  return num_samples // global_batch


def batch_indices(order: np.ndarray, step_in_epoch: int, global_batch: int,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """This process's contiguous slice of one global batch.

  Args:
    order: the epoch's order (``epoch_order``).
    step_in_epoch: which global batch, 0-based.
    global_batch: samples per step over all processes.
    process_index: this process.
    process_count: processes in the run; must divide ``global_batch``.

  Returns:
    int32 (global_batch // process_count,) sample indices.
  """
  if global_batch % process_count:
    raise ValueError(f"batch_indices: global batch {global_batch} is not divisible by "
                     f"{process_count} processes")
  if not 0 <= process_index < process_count:
    raise ValueError(f"batch_indices: process_index {process_index} not in [0, {process_count})")
  steps = steps_per_epoch(len(order), global_batch)
  if not 0 <= step_in_epoch < steps:
    raise ValueError(f"batch_indices: step {step_in_epoch} not in [0, {steps}) for "
                     f"{len(order)} samples and global batch {global_batch}")
  per = global_batch // process_count
  start = step_in_epoch * global_batch + process_index * per
  return np.asarray(order[start:start + per], np.int32)


def load_train_set_from_tfds(data_dir, features: Sequence[str], K: int, L: int,
                             cache_dir=None, split: str = "train") -> TrainSet:
  """``load_train_set`` from a TFDS copy: one descriptor set per feature, stacked.

  The neighbour cache is keyed by content and named by the feature, as for the files, so a run
  from the files and one from their TFDS copy share it.

  Args:
    data_dir: the TFDS data_dir.
    features: descriptor sets (config names, or their train/ files: ``feature_name``); several
      stack several sets, all with the first one's cluster labels, which every other repeats.
    K: tokens per sample.
    L: anchors per sample.
    cache_dir: the neighbour cache; None: no cache.
    split: the training split.

  Returns:
    A ``TrainSet``.
  """
  from csa_jax.data import tfds_reader  # noqa: PLC0415  (the optional tfds extra)

  if not features:
    raise fail("<arguments>", "features", "at least one descriptor set", "none")
  features = [layout.feature_name(f) for f in features]
  feats, nbrs, sets, dim, clusters = [], [], [], None, None
  for feature in features:
    f, c = tfds_reader.load_train_from_tfds(data_dir, feature, split, dim=dim)
    where = tfds_reader.dataset_dir(data_dir, feature)
    if clusters is None:
      clusters = c
      if max(K, L) > len(c):
        raise fail(where, f"{split}.cluster", f"at least max(K, L) = {max(K, L)} images",
                   f"{len(c)}")
    elif not np.array_equal(c, clusters):
      raise fail(where, f"{split}.cluster", f"the cluster ids of '{features[0]}'", "others")
    dim, start = f.shape[1], sum(len(x) for x in feats)
    nb, _ = neighbors.load_or_compute(f, K, L, cache_dir=cache_dir, name=feature)
    feats.append(f)
    nbrs.append(nb + np.int32(start))
    sets.append((feature, start, start + len(f)))
  return TrainSet(feats_NxC=np.concatenate(feats),
                           clusters_N=np.tile(clusters, len(feats)),
                           nbrs_NxM=np.concatenate(nbrs), sets=sets)


def load_train_data(config, workdir: str) -> TrainSet:
  """The training set a config describes.

  Args:
    config: a training config; ``data.source`` is 'files' (descriptor and annotation files,
      neighbour lists cached under ``data.cache_dir``), 'tfds' (``data.root`` is the TFDS
      data_dir ``csa-jax convert-data --to tfds`` wrote; ``data.descriptors`` name descriptor
      sets, 'train/<feature>.pkl' naming <feature>; the annotations come with them) or 'random'
      (``random_train_set``).
    workdir: the run's directory; the neighbour cache goes to ``<workdir>/neighbors`` by default.

  Returns:
    A ``train_set.TrainSet``.
  """
  d, m = config.data, max(config.data.K, config.model.anchors)
  if d.source == "random":
    return random_train_set(d.num_samples, d.num_clusters, d.dim, m,
                                     config.train.seed)
  cache = d.cache_dir or os.path.join(workdir, "neighbors")
  if d.source == "tfds":
    return load_train_set_from_tfds(d.root, list(d.descriptors), K=d.K,
                                             L=config.model.anchors, cache_dir=cache,
                                             split=d.split)
  if d.source != "files":
    raise InputError(f"config: data.source: expected 'files', 'tfds' or 'random', found "
                     f"{d.source!r}")
  root = d.root or ""
  resolve = lambda p: p if os.path.isabs(p) or not root else os.path.join(root, p)
  if not d.descriptors:
    raise InputError("config: data.descriptors: expected at least one descriptor file, found ()")
  return load_train_set([resolve(p) for p in d.descriptors], resolve(d.annotations),
                                 K=d.K, L=config.model.anchors, cache_dir=cache, split=d.split)
