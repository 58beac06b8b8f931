"""The training neighbour lists (docs/method.md section 2): computed on device, cached on disk.

nbrs[i] = the top M = max(K, L) images of the descriptor set by similarity to image i, descending,
ties broken by lower index, with nbrs[i, 0] = i even when exact duplicates of i exist. Computing
them is an N x N search (91,642^2 for rSfM120k), so the result is stored under a key of the
descriptors' content hash, K and L, and reused while the key and the file's checks hold.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

import jax
import numpy as np

from csa_jax.errors import fail
from csa_jax.fileio import save_npz
from csa_jax.formats.npyio import load_npz
from csa_jax.retrieval.search import top_k_search

# Bumped whenever the definition of the lists changes, so old caches are recomputed, not reused.
CACHE_VERSION = "nbrs-v1"
_BLOCK_BYTES = 1 << 28  # scores per query block: at most 256 MiB of float32 on device

log = logging.getLogger(__name__)


def content_hash(feats_NxC: np.ndarray) -> str:
  """The cache key of a descriptor set.

  Args:
    feats_NxC: the descriptors, any dtype and memory order.

  Returns:
    Hex blake2b of the descriptors as used (float32, C-order, with their shape), so the same
    content read from a pickle or from its converted .npz gives the same key.
  """
  a = np.ascontiguousarray(feats_NxC, np.float32)
  h = hashlib.blake2b(digest_size=20)
  h.update(f"{CACHE_VERSION}|{a.shape}|float32|".encode())
  step = 1 << 24  # hash in 16 MiB pieces, no second copy of a large array
  flat = a.reshape(-1).view(np.uint8)
  for s in range(0, flat.size, step):
    h.update(flat[s:s + step])
  return h.hexdigest()


def ensure_self_first(nbrs_NxM: np.ndarray) -> np.ndarray:
  """Row i with i in column 0 (docs/method.md section 2), even among exact duplicates of i.

  Args:
    nbrs_NxM: neighbour lists by descending similarity.

  Returns:
    int32 copy in which i moved to column 0 of row i (the others keep their order), inserted
    (dropping the last column's entry) where it was missing.
  """
  nbrs = np.array(nbrs_NxM, np.int32, copy=True)
  rows = np.nonzero(nbrs[:, 0] != np.arange(len(nbrs)))[0]
  for i in rows:  # only rows with exact duplicates of i: rare
    r = nbrs[i]
    hit = np.nonzero(r == i)[0]
    rest = np.delete(r, hit[0]) if hit.size else r[:-1]
    nbrs[i] = np.concatenate([[i], rest])
  return nbrs


def top_neighbors(feats_NxC, M: int, block: int | None = None,
                  progress: bool = True) -> np.ndarray:
  """Each image's top-M images of the same set, itself first (docs/method.md section 2).

  Args:
    feats_NxC: L2-normalised descriptors.
    M: neighbours per image, 1 <= M <= N.
    block: query rows per device call; default 256 MiB of scores.
    progress: log progress every 5 s when there is more than one block.

  Returns:
    int32 nbrs_NxM by descending similarity, ties to the lower index
    (``retrieval.search.top_k_search`` on the default device).
  """
  feats = np.ascontiguousarray(feats_NxC, np.float32)
  n = len(feats)
  if not 1 <= M <= n:
    raise ValueError(f"top_neighbors: M={M} must be in [1, N={n}]")
  block = block or int(np.clip(_BLOCK_BYTES // (4 * n), 1, 4096))
  feats_dev = jax.device_put(feats)
  out = np.empty((n, M), np.int32)
  t0 = last = time.time()
  for start in range(0, n, block):
    stop = min(start + block, n)
    _, idx = top_k_search(feats_dev[start:stop], feats_dev, M)
    out[start:stop] = np.asarray(idx)
    now = time.time()
    if progress and (now - last > 5 or stop == n) and n > block:
      rate = stop / max(now - t0, 1e-9)
      log.info("neighbours: %d/%d images, %.0f/s, ETA %.0f s", stop, n, rate, (n - stop) / rate)
      last = now
  return ensure_self_first(out)


def cache_path(cache_dir, digest: str, K: int, L: int) -> str:
  """The cache file of (descriptor content ``digest``, K, L) in ``cache_dir``."""
  return os.path.join(os.fspath(cache_dir), f"nbrs_{digest[:24]}_K{K}_L{L}.npz")


def _valid(path: str, digest: str, K: int, L: int, n: int) -> np.ndarray | None:
  """The cached lists when the file is complete and matches the key, else None (with a note)."""
  try:
    z = load_npz(path)
    meta = (str(z["hash"]), int(z["K"]), int(z["L"]))
    nbrs = z["nbrs"]
  except Exception as e:  # corrupt, truncated or foreign: recompute
    log.warning("neighbour cache %s: unreadable (%s); recomputing", path, type(e).__name__)
    return None
  m = max(K, L)
  ok = (meta == (digest, K, L) and nbrs.dtype == np.int32 and nbrs.shape == (n, m)
        and nbrs.min() >= 0 and nbrs.max() < n and np.array_equal(nbrs[:, 0], np.arange(n)))
  if not ok:
    log.warning("neighbour cache %s: does not match the descriptors/K/L; recomputing", path)
    return None
  return nbrs


def load_or_compute(feats_NxC: np.ndarray, K: int, L: int, cache_dir=None, name: str = "",
                    **kw) -> tuple[np.ndarray, bool]:
  """The neighbour lists of a descriptor set, from the cache when it holds them.

  Args:
    feats_NxC: L2-normalised descriptors.
    K: tokens per training sample.
    L: anchors per training sample.
    cache_dir: where entries keyed by (content hash, K, L) live; None computes and stores
      nothing.
    name: the set's name, for the log.
    **kw: passed to ``top_neighbors``.

  Returns:
    (nbrs int32 (N, max(K, L)), cache_hit). A missing or invalid entry is computed and stored
    atomically; a cache that cannot be written is an ``InputError`` naming the path and errno.
  """
  m = max(K, L)
  if cache_dir is None:
    return top_neighbors(feats_NxC, m, **kw), False
  digest = content_hash(feats_NxC)
  of = f" of {name}" if name else ""
  path = cache_path(cache_dir, digest, K, L)
  if os.path.exists(path):
    nbrs = _valid(path, digest, K, L, len(feats_NxC))
    if nbrs is not None:
      log.info("neighbours%s: cache hit %s", of, path)
      return nbrs, True
  log.info("neighbours%s: computing top-%d of %d images", of, m, len(feats_NxC))
  nbrs = top_neighbors(feats_NxC, m, **kw)
  try:
    save_npz(path, nbrs=nbrs, hash=np.array(digest), K=np.array(K), L=np.array(L),
             version=np.array(CACHE_VERSION))
  except OSError as e:  # a read-only or full cache directory: one line, before any training
    raise fail(os.path.dirname(os.path.abspath(path)), "data.cache_dir",
               "a writable neighbour cache directory (or --config.data.cache_dir=DIR)",
               f"[Errno {e.errno}] {e.strerror}" if e.errno else type(e).__name__) from None
  return nbrs, False
