"""The training input pipeline: the host only chooses sample indices (docs/method.md section 2).

Descriptors, neighbour lists and cluster ids are put on device once; each step the host hands the
jitted step a batch of query indices and ``affinity.training_affinity`` builds the (B, K, L)
affinities and targets there. The order is a pure function of (seed, epoch), and in a multi-host
run process p takes the p-th contiguous slice of every global batch, so all processes agree on
the global batch without talking to each other.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from csa_jax.data import readers as data_io
from csa_jax.data import neighbors
from csa_jax.errors import fail


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


def _set_name(path: str) -> str:
  base = os.path.basename(os.fspath(path))
  for ext in (".pkl", ".pickle", ".npz", ".npy"):
    if base.endswith(ext):
      return base[:-len(ext)]
  return base


def load_train_set(descriptor_paths: list[str], annotations_path: str, K: int, L: int,
                   cache_dir=None, split: str = "train") -> TrainSet:
  """Reads the annotations and every descriptor set, and attaches (cached) neighbour lists.

  Several paths stack several descriptor sets (the augmented setting): each set gets neighbours
  computed inside itself, offset into the stacked matrix, and the same cluster labels.
  """
  if not descriptor_paths:
    raise fail("<arguments>", "descriptor_paths", "at least one descriptor file", "none")
  ann = data_io.load_annotations(annotations_path)
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
    f = data_io.load_descriptors(path, key=split, n=n, dim=dim)
    dim = f.shape[1]
    start = sum(len(x) for x in feats)
    nb, _ = neighbors.load_or_compute(f, K, L, cache_dir=cache_dir, name=_set_name(path))
    feats.append(f)
    nbrs.append(nb + np.int32(start))
    sets.append((_set_name(path), start, start + n))
  return TrainSet(feats_NxC=np.concatenate(feats), clusters_N=np.tile(clusters, len(feats)),
                  nbrs_NxM=np.concatenate(nbrs), sets=sets)


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
  """The epoch's sample order: a permutation of range(num_samples), a pure function of (seed,
  epoch), so a resumed run replays exactly the order it was in."""
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, 0x5A])))
  return rng.permutation(num_samples).astype(np.int32)


def steps_per_epoch(num_samples: int, global_batch: int) -> int:
  """Full global batches per epoch (the remainder is dropped, as the original loader does)."""
  if global_batch < 1:
    raise ValueError(f"steps_per_epoch: global_batch must be >= 1, got {global_batch}")
  return num_samples // global_batch


def batch_indices(order: np.ndarray, step_in_epoch: int, global_batch: int,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """int32 (global_batch // process_count,): this process's contiguous slice of global batch
  ``step_in_epoch`` of ``order``."""
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


def device_put_train_set(ts: TrainSet, sharding=None):
  """(feats_NxC, nbrs_NxM, clusters_N) as device arrays, replicated on ``sharding`` (default:
  the default device), ready for ``training_affinity`` inside a jitted step."""
  def put(x):
    if sharding is None:
      return jax.device_put(x)
    # Built from per-device callbacks, so it also works when the sharding spans other hosts.
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return put(ts.feats_NxC), put(ts.nbrs_NxM), put(ts.clusters_N)
