"""Training and evaluation data from a TFDS copy (``data.tfds_builder``), without TensorFlow.

Every reader opens ``<data_dir>/csa_data/<feature>/1.0.0`` through ``tfds.data_source`` (random
access to the ArrayRecord files; tensorflow_datasets imported on first use) and returns exactly
what the matching file reader (``data.descriptors``, ``data.ground_truth``,
``data.annotations``) returns for the files the dataset was packed from:

  load_train_from_tfds        (feats_NxC, clusters_N)  = load_descriptors + load_annotations
  load_annotations_from_tfds  load_annotations' dict
  load_test_set_from_tfds     (q_QxC, db_NxC, gnd)     = load_test_set
  load_r1m_from_tfds          distractors_NxC          = load_r1m

What is read is checked as the file readers check it (finite float32 unit descriptors of one size,
every index 0..n-1 present once, cluster ids and pairs, gnd indices inside the database, counts
cross-checked); any problem, a missing dataset or split included, is one ``InputError`` line.
"""

from __future__ import annotations

import os

import numpy as np

from csa_jax.data import descriptors, ground_truth, index_lists
from csa_jax.data.tfds_builder import (NAME, R1M, SEQUENCES, VERSION, check_feature, dataset_dir,
                                       import_tfds)
from csa_jax.errors import fail, short_reason

_FIELDS = {"index", "name", "cluster", "descriptor", "bbx", *SEQUENCES}
_CHUNK = 4096  # examples decoded per read


def open_tfds(data_dir, feature: str) -> dict:
  """The dataset's splits as random-access sources: {split: tfds ArrayRecordDataSource}."""
  check_feature(feature)
  tfds = import_tfds()
  where = dataset_dir(data_dir, feature)
  if not os.path.isfile(os.path.join(where, "dataset_info.json")):
    raise fail(where, "dataset", f"a TFDS dataset written by build_tfds ({NAME}/{feature}, "
               f"version {VERSION})", "no dataset_info.json there")
  try:
    sources = tfds.data_source(f"{NAME}/{feature}:{VERSION}", data_dir=os.fspath(data_dir),
                               download=False)
  except Exception as e:  # noqa: BLE001  (TFDS / ArrayRecord errors: one line)
    raise fail(where, "dataset", "a readable TFDS ArrayRecord dataset",
               short_reason(e)) from None
  features = next(iter(sources.values())).dataset_info.features if sources else None
  keys = set(features.keys()) if features is not None else set()
  if keys != _FIELDS:
    raise fail(where, "features", f"the fields {sorted(_FIELDS)}", f"{sorted(keys)}")
  shape = tuple(features["descriptor"].shape)
  if len(shape) != 1 or not shape[0]:
    raise fail(where, "features.descriptor", "descriptors of shape (C,), C >= 1", f"{shape}")
  return sources


def _read(sources: dict, where: str, split: str) -> dict:
  """Every example of ``split``, in index order: arrays for scalars, lists for ragged fields."""
  if split not in sources:
    raise fail(where, split, "a split of that name", f"only {sorted(sources)}")
  src, field = sources[split], split
  n = len(src)
  dim = src.dataset_info.features["descriptor"].shape[0]
  out = {"descriptor": np.empty((n, dim), np.float32), "cluster": np.empty(n, np.int64),
         "name": [""] * n, "bbx": [None] * n, **{k: [None] * n for k in SEQUENCES}}
  seen = np.zeros(n, bool)
  for a in range(0, n, _CHUNK):
    rows = range(a, min(n, a + _CHUNK))
    try:
      chunk = src.__getitems__(list(rows))
      if any(ex is None for ex in chunk):  # a record ArrayRecord could not find (truncated)
        raise ValueError("a record missing from the file")
    except Exception as e:  # noqa: BLE001  (a truncated or corrupt record file)
      raise _damaged_shard(src, where, split, rows, e) from None
    for ex in chunk:
      i = int(ex["index"])
      if not 0 <= i < n or seen[i]:
        raise fail(where, f"{field}.index", f"each of 0..{n - 1} once",
                   f"{i}{' twice' if 0 <= i < n else ''}")
      seen[i] = True
      out["descriptor"][i] = ex["descriptor"]
      out["cluster"][i] = int(ex["cluster"])
      name = ex["name"]
      out["name"][i] = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
      for k in (*SEQUENCES, "bbx"):
        out[k][i] = ex[k]
  return out


def _shards(src, split: str) -> list[tuple[str, int, int]]:
  """(file, first row, row count) of each shard of ``split``, as dataset_info.json lists them."""
  try:
    info = src.dataset_info.splits[split]
    paths, lengths = [os.fspath(p) for p in info.filepaths], [int(x) for x in info.shard_lengths]
  except Exception:  # noqa: BLE001  (an info without shard lists: the caller names the split)
    return []
  if len(paths) != len(lengths):
    return []
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
  return list(zip(paths, starts, lengths))


def _damaged_shard(src, where: str, split: str, rows: range, e: Exception):
  """The one line for a shard that cannot be read: which file, what dataset_info.json says it
  holds, its size, and the reader's complaint (found by reading each shard of the failed rows
  alone)."""
  reason = short_reason(e)
  for path, start, count in _shards(src, split):
    if start + count <= rows.start or start >= rows.stop:
      continue
    try:
      got = src.__getitems__(list(range(start, start + count)))
      if all(ex is not None for ex in got):
        continue
      why = "records missing"
    except Exception as ee:  # noqa: BLE001  (this shard is the damaged one)
      # A record the index lists but the file no longer holds reaches TFDS's decoder as None.
      why = ("records missing" if "NoneType" in str(ee) else
             short_reason(ee))
    try:
      size = f"{os.path.getsize(path)} bytes"
    except OSError as oe:
      size = oe.strerror or "unreadable"
    return fail(path, f"{split} shard", f"a complete ArrayRecord shard of {count} examples (as "
                "dataset_info.json records; rebuild the TFDS copy with convert-data --to tfds)",
                f"{size} ({why})")
  return fail(where, split, f"{len(src)} readable examples (rebuild the TFDS copy with "
              "convert-data --to tfds)", f"rows {rows.start}..{rows.stop - 1}: {reason}")


def _names(names: list):
  """The names of a split, None when the source had none (every name empty)."""
  return names if any(names) else None


def _from_positions(per_image: list, n: int, where: str, field: str):
  """qidxs (or pidxs) back from, per image j, the pair numbers p with qidxs[p] == j."""
  total = sum(len(v) for v in per_image)
  if total == 0:
    return None
  out = np.full(total, -1, np.int64)
  for j, ps in enumerate(per_image):
    for p in np.asarray(ps, np.int64).tolist():
      if not 0 <= p < total or out[p] >= 0:
        raise fail(where, field, f"each pair number 0..{total - 1} once", f"{p}")
      out[p] = j
  return index_lists.as_indices(out, where, field, n)


def _clusters(c: np.ndarray, where: str, field: str) -> np.ndarray:
  a = index_lists.as_indices(c, where, field)
  if a.size == 0:
    raise fail(where, field, "one cluster id per image", "an empty split")
  if a.max() > np.iinfo(np.int32).max:
    raise fail(where, field, "cluster ids that fit int32", f"max {int(a.max())}")
  return a.astype(np.int32)


def _annotation(ex: dict, where: str, split: str) -> dict:
  n = len(ex["cluster"])
  pairs = {k: _from_positions(ex[f], n, where, f"{split}.{k}")
           for k, f in (("qidxs", "query_in_pairs"), ("pidxs", "positive_in_pairs"))}
  if pairs["qidxs"] is not None and pairs["pidxs"] is not None \
      and len(pairs["qidxs"]) != len(pairs["pidxs"]):
    raise fail(where, f"{split}.pidxs", f"one positive per query ({len(pairs['qidxs'])})",
               f"{len(pairs['pidxs'])}")
  return {"cluster": _clusters(ex["cluster"], where, f"{split}.cluster"),
          "cids": _names(ex["name"]), **pairs}


def load_annotations_from_tfds(data_dir, feature: str) -> dict:
  """``annotations.load_annotations``' dict: {'train' (and 'val' when packed): {'cluster', 'cids',
  'qidxs', 'pidxs'}}."""
  sources, where = open_tfds(data_dir, feature), dataset_dir(data_dir, feature)
  return {s: _annotation(_read(sources, where, s), where, s)
          for s in ("train", "val") if s in sources or s == "train"}


def load_descriptors_from_tfds(data_dir, feature: str, split: str) -> np.ndarray:
  """One split's descriptors, float32 (n, C), checked as ``descriptors.as_descriptors`` checks."""
  sources, where = open_tfds(data_dir, feature), dataset_dir(data_dir, feature)
  x = _read(sources, where, split)["descriptor"]
  return descriptors.as_descriptors(x, where, f"{split}.descriptor", n=len(x))


def load_train_from_tfds(data_dir, feature: str, split: str = "train",
                         dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """A training split: what ``load_descriptors(train/<feature>, split)`` and
  ``load_annotations(...)[split]['cluster']`` return for the packed files.

  Args:
    data_dir: the TFDS data_dir ``build_tfds`` wrote to.
    feature: the descriptor set (config name).
    split: 'train' or 'val'.
    dim: the expected descriptor size, when known (checked).

  Returns:
    (feats_NxC float32 unit rows, clusters_N int32).
  """
  sources, where = open_tfds(data_dir, feature), dataset_dir(data_dir, feature)
  if split not in ("train", "val"):
    raise fail(where, "split", "'train' or 'val' (a training split)", repr(split))
  ex = _read(sources, where, split)
  clusters = _annotation(ex, where, split)["cluster"]
  feats = descriptors.as_descriptors(ex["descriptor"], where, f"{split}.descriptor",
                                 n=len(clusters), dim=dim)
  return feats, clusters


def tfds_test_sets(data_dir, feature: str) -> list[str]:
  """The test sets packed in the dataset (those with both <ds>_db and <ds>_query)."""
  return split_test_sets(open_tfds(data_dir, feature))


def split_test_sets(sources) -> list[str]:
  """The test sets among ``open_tfds``' splits (both <ds>_db and <ds>_query), sorted."""
  splits = set(sources)
  return sorted(s[:-3] for s in splits if s.endswith("_db") and s[:-3] + "_query" in splits)


def load_test_set_from_tfds(data_dir, feature: str, dataset: str):
  """One test set: what ``ground_truth.load_test_set`` returns for the packed files.

  Args:
    data_dir: the TFDS data_dir.
    feature: the descriptor set.
    dataset: the test set ('roxford5k', ...).

  Returns:
    (query_QxC, db_NxC, gnd): float32 unit descriptors and ``load_gnd``'s list (int64 'easy',
    'hard', 'junk', float64 'bbx' when the source had one).
  """
  sources, where = open_tfds(data_dir, feature), dataset_dir(data_dir, feature)
  if f"{dataset}_db" not in sources or f"{dataset}_query" not in sources:
    have = sorted(s[:-3] for s in sources if s.endswith("_db"))
    raise fail(where, f"{dataset}_db", f"test set '{dataset}' (splits {dataset}_db and "
               f"{dataset}_query)", f"test sets {have}")
  db_ex = _read(sources, where, f"{dataset}_db")
  q_ex = _read(sources, where, f"{dataset}_query")
  entries = []
  for i in range(len(q_ex["cluster"])):
    e = {k: np.asarray(q_ex[k][i], np.int64) for k in ("easy", "hard", "junk")}
    if len(q_ex["bbx"][i]):
      e["bbx"] = np.asarray(q_ex["bbx"][i], np.float64)
    entries.append(e)
  doc = {"gnd": entries}
  for key, names in (("imlist", db_ex["name"]), ("qimlist", q_ex["name"])):
    if _names(names) is not None:
      doc[key] = names
  # The gnd as a gnd file holds it, through the file readers' own checks (indices in the db,
  # one name per image, a bbx of 4 finite numbers).
  gnd = ground_truth.parse_gnd(doc, f"{where}: {dataset}_query", n_db=len(db_ex["cluster"]))
  db = descriptors.as_descriptors(db_ex["descriptor"], where, f"{dataset}_db.descriptor",
                              n=len(db_ex["cluster"]))
  q = descriptors.as_descriptors(q_ex["descriptor"], where, f"{dataset}_query.descriptor",
                             n=len(gnd), dim=db.shape[1])
  return q, db, gnd


def load_r1m_from_tfds(data_dir, feature: str, dim: int | None = None) -> np.ndarray:
  """The R1M distractors (n, C) float32, checked as ``large_descriptors.load_r1m`` checks them."""
  sources, where = open_tfds(data_dir, feature), dataset_dir(data_dir, feature)
  x = _read(sources, where, R1M)["descriptor"]
  return descriptors.as_descriptors(x, where, f"{R1M}.descriptor", n=len(x), dim=dim)
