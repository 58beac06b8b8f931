"""rSfM120k training annotations: one cluster label (3D model) per image (docs/method.md
section 2), with the image ids and query/positive pairs checked when present."""

from __future__ import annotations

import os

import numpy as np

from csa_jax.data.index_lists import as_indices, as_names
from csa_jax.errors import fail
from csa_jax.formats.containers import describe, load_container


def _as_clusters(v, source: str, field: str) -> np.ndarray:
  a = as_indices(v, source, field)
  if a.size == 0:
    raise fail(source, field, "one cluster id per image", "an empty list")
  if a.max() > np.iinfo(np.int32).max:
    raise fail(source, field, "cluster ids that fit int32", f"max {int(a.max())}")
  return a.astype(np.int32)


def load_annotations(path) -> dict:
  """rSfM120k annotations (retrieval-SfM-120k.pkl or the same as .json).

  cluster is what training needs; cids, qidxs and pidxs are checked when present (lengths,
  indices inside the split).

  Args:
    path: the file.

  Returns:
    {split: {'cluster': int32 (n,), 'cids': list | None, 'qidxs': int64 | None,
    'pidxs': int64 | None}} for the splits present ('train' required, 'val' optional).
  """
  path = os.fspath(path)
  obj = load_container(path)
  if not isinstance(obj, dict) or "train" not in obj:
    raise fail(path, "train", "a dict with a 'train' split (and optionally 'val')",
               describe(obj))
  out = {}
  for split in ("train", "val"):
    if split not in obj:
      continue
    s = obj[split]
    if not isinstance(s, dict):
      raise fail(path, split, "a dict with 'cluster' (and 'cids', 'qidxs', 'pidxs')",
                 describe(s))
    if "cluster" not in s:
      raise fail(path, f"{split}.cluster", "one cluster id per image",
                 f"no such key (keys: {sorted(map(str, s))})")
    cluster = _as_clusters(s["cluster"], path, f"{split}.cluster")
    n = len(cluster)
    cids = s.get("cids")
    if cids is not None:
      cids = as_names(cids, path, f"{split}.cids")
      if len(cids) != n:
        raise fail(path, f"{split}.cids", f"{n} image ids (one per cluster label)",
                   f"{len(cids)}")
    pair = {k: as_indices(s[k], path, f"{split}.{k}", n) for k in ("qidxs", "pidxs") if k in s}
    if len(pair) == 2 and len(pair["qidxs"]) != len(pair["pidxs"]):
      raise fail(path, f"{split}.pidxs", f"one positive per query ({len(pair['qidxs'])})",
                 f"{len(pair['pidxs'])}")
    out[split] = {"cluster": cluster, "cids": cids, "qidxs": pair.get("qidxs"),
                  "pidxs": pair.get("pidxs")}
  return out
