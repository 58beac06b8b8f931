"""A data root packed into a versioned TFDS dataset in ArrayRecord format (optional extra "tfds").

``build_tfds(root, feature, out_dir)`` reads a docs/method.md section 6 root through
the file readers (restricted unpickling, size checks, every descriptor checked) and writes
``<out_dir>/csa_data/<feature>/1.0.0``: one TFDS config per descriptor set, records in
ArrayRecord files (random access, read by ``data.tfds_reader`` through ``tfds.data_source``).
tensorflow-datasets (4.9.10 tested) builds and reads these without TensorFlow: it is never
imported, installed or not.

Splits (every split shares one feature schema; a field that does not apply holds its default):

  train, val         the training descriptors with their rSfM120k annotations ('val' when both
                     the annotations and the features file have it)
  <ds>_db            a test set's database descriptors (name: its gnd 'imlist')
  <ds>_query         its queries (name: 'qimlist') with the revisited ground truth
  r1m                the R1M distractors (optional)

Example fields: ``index`` (the row in the source array; examples are stored in index order),
``descriptor`` float32[C] (as validated: unit rows), ``name`` (image id, '' when the source has
none), ``cluster`` (train/val, else -1), ``query_in_pairs`` / ``positive_in_pairs`` (the pair
numbers p with qidxs[p] / pidxs[p] == index), ``easy`` / ``hard`` / ``junk`` (database indices,
ragged int64) and ``bbx`` (0 or 4 float64) on query examples. A list the source has but leaves
empty (cids, qidxs, pidxs, imlist, qimlist) reads back as absent.

Nothing is written unless everything but R1M has been read and validated; TFDS writes into an
``incomplete.*`` directory renamed only when every split is complete, and removes it on failure.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
import types
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from csa_jax.data import annotations, descriptors, ground_truth, large_descriptors, layout
from csa_jax.errors import InputError, fail
from csa_jax.fileio import check_output_path
from csa_jax.formats import containers

log = logging.getLogger(__name__)

NAME = "csa_data"  # the TFDS dataset name (from the builder class CsaData)
VERSION = "1.0.0"
INSTALL = "pip install 'csa_jax[tfds]'"
R1M = layout.R1M_DIR
_FEATURE_RE = re.compile(r"[A-Za-z0-9][\w+.-]*", re.ASCII)  # a TFDS config name
_DATASET_RE = re.compile(r"[A-Za-z0-9][\w-]*", re.ASCII)  # '<ds>_db' must be a TFDS split name
SEQUENCES = ("query_in_pairs", "positive_in_pairs", "easy", "hard", "junk")
DESCRIPTION = (
    "CSA re-ranking data (docs/method.md section 6) for one descriptor set (the config name): "
    "splits train/val (descriptors with rSfM120k cluster ids and qidxs/pidxs pairs), <ds>_db and "
    "<ds>_query per revisited test set (query examples carry the easy/hard/junk database indices "
    "and the bbx), and r1m (distractors) when packed. 'index' is the row in the source array.")


def import_tfds():
  """``tensorflow_datasets``, imported on first use; one ``InputError`` line when it is missing."""
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415  (optional extra)
  except ImportError as e:
    raise fail("tensorflow_datasets", "import", f"the optional extra 'tfds' ({INSTALL})",
               f"{type(e).__name__}: {e}") from None
  try:
    import array_record  # noqa: F401,PLC0415  (the ArrayRecord reader/writer)
  except ImportError as e:  # the extra skips it where it has no wheels (Windows, Intel macOS)
    raise fail("array_record", "import", "the ArrayRecord package the TFDS format needs (wheels "
               "for Linux and Apple-silicon macOS only; elsewhere keep the data root's files)",
               f"{type(e).__name__}: {e}") from None
  return tfds


def dataset_dir(data_dir, feature: str) -> str:
  """Where ``build_tfds`` puts one descriptor set: ``<data_dir>/csa_data/<feature>/1.0.0``."""
  return os.path.join(os.fspath(data_dir), NAME, feature, VERSION)


def check_feature(feature: str, source: str = "<arguments>", field: str = "feature") -> str:
  """``feature`` if it can name a TFDS config, else the ``InputError`` line saying so."""
  if not isinstance(feature, str) or not _FEATURE_RE.fullmatch(feature):
    raise fail(source, field, "a descriptor set name of letters, digits and _ - + . "
               "(a TFDS config name)", repr(feature))
  return feature


def find_test_sets(root: str, feature: str) -> list[str]:
  """The test sets under ``root`` with ``feature`` descriptors and a gnd file that TFDS can
  name (letters, digits, _ and -: '<ds>_db' becomes a split name), sorted."""
  found = []
  for ds in layout.test_set_names(root, feature):
    if _DATASET_RE.fullmatch(ds):
      found.append(ds)
    else:
      log.warning("%s: not a test set name TFDS can hold (letters, digits, _ and -): skipped",
                  os.path.join(root, "test", ds))
  return found


def _example(index: int, descriptor, name: str = "", cluster: int = -1, **lists) -> dict:
  ex = {"index": index, "name": name, "descriptor": descriptor, "cluster": cluster}
  for k in SEQUENCES + ("bbx",):
    ex[k] = lists.get(k, [])
  return ex


def _positions(idx, n: int) -> list[list[int]]:
  """For qidxs (or pidxs) ``idx``: per image j < n, the pair numbers p with idx[p] == j."""
  out = [[] for _ in range(n)]
  for p, j in enumerate(np.asarray(idx if idx is not None else [], np.int64).tolist()):
    out[j].append(p)
  return out


def _train_examples(feats, ann: dict):
  q, p = _positions(ann["qidxs"], len(feats)), _positions(ann["pidxs"], len(feats))
  cids = ann["cids"] or [""] * len(feats)
  for i, row in enumerate(feats):
    yield i, _example(i, row, cids[i], int(ann["cluster"][i]), query_in_pairs=q[i],
                      positive_in_pairs=p[i])


def _db_examples(db, names):
  names = names or [""] * len(db)
  for i, row in enumerate(db):
    yield i, _example(i, row, names[i])


def _query_examples(q, gnd, names):
  names = names or [""] * len(q)
  for i, (row, g) in enumerate(zip(q, gnd)):
    extra = {"bbx": g["bbx"].tolist()} if "bbx" in g else {}
    yield i, _example(i, row, names[i], easy=g["easy"], hard=g["hard"], junk=g["junk"], **extra)


def _r1m_examples(path: str, dim: int):
  # validated when its split is written, after the others
  x = large_descriptors.load_r1m(path, dim=dim)
  for i in range(len(x)):
    yield i, _example(i, np.asarray(x[i]))


@functools.cache
def _builder_base(tfds):
  """The builder class (defined on first use: tensorflow_datasets is an optional extra)."""

  class _Info(tfds.core.DatasetInfo):
    def initialize_from_bucket(self) -> None:  # a local dataset: never GCS, no temp dir
      pass

  class CsaData(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """CSA data; ``_splits``: {split: examples} and ``_dim`` are set by ``build_tfds``."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Descriptors, rSfM120k annotations, revisited gnd, R1M."}
    _splits: ClassVar[dict | None] = None
    _dim: ClassVar[int] = 0

    def _info(self):
      f = tfds.features
      seq = {k: f.Sequence(np.int64) for k in SEQUENCES}
      return _Info(
          builder=self, description=DESCRIPTION, disable_shuffling=True,
          features=f.FeaturesDict({
              "index": np.int64, "name": f.Text(), "cluster": np.int64,
              "descriptor": f.Tensor(shape=(self._dim,), dtype=np.float32, encoding="bytes"),
              "bbx": f.Sequence(np.float64), **seq}))

    def _split_generators(self, dl_manager):
      return dict(self._splits or {})

    def _generate_examples(self):  # unused: _split_generators hands out the generators
      raise NotImplementedError

  return CsaData


def _builder(tfds, feature: str, out_dir: str, dim: int, splits: dict):
  base = _builder_base(tfds)
  config = tfds.core.BuilderConfig(name=feature, version=VERSION,
                                   description=f"descriptor set '{feature}' (C={dim})")
  body = {"BUILDER_CONFIGS": [config], "_dim": dim, "_splits": splits}
  cls = types.new_class("CsaData", (base,), {"skip_registration": True},
                        lambda ns: ns.update(body))
  return cls(data_dir=out_dir, config=feature, file_format="array_record")


def build_tfds(root, feature: str, out_dir, datasets: Sequence[str] | None = None,
               r1m: bool = False) -> str:
  """Packs one descriptor set of a data root into a TFDS ArrayRecord dataset.

  Args:
    root: the data root (docs/method.md section 6: annotations/, train/, test/<ds>/).
    feature: the descriptor set (train/<feature>.*, test/<ds>/<feature>.*); the config name.
    out_dir: the TFDS data_dir; the dataset goes to ``dataset_dir(out_dir, feature)``, which
      must not exist yet.
    datasets: the test sets to pack; None: every test/<ds>/<feature>.* with a gnd file.
    r1m: also pack test/r1m/<feature>.* as the 'r1m' split.

  Returns:
    The dataset's directory.
  """
  root, out_dir = os.fspath(root), os.path.abspath(os.fspath(out_dir))
  check_feature(feature)
  dst = dataset_dir(out_dir, feature)
  if os.path.exists(dst):
    raise fail(dst, "out_dir", "a new dataset directory (remove it to rebuild)",
               "it exists")
  check_output_path(os.path.join(dst, "dataset_info.json"), "out_dir")
  tfds = import_tfds()
  if not os.path.isdir(root):
    raise fail(root, "root", "a data root (docs/method.md section 6)", "no such directory")
  splits, dim = {}, None
  ann_path = layout.annotations_file(root)
  ann = annotations.load_annotations(ann_path)
  train_path = layout.train_file(root, feature)
  obj = containers.load_container(train_path)
  for split, a in ann.items():
    if split != "train" and (not isinstance(obj, dict) or split not in obj):
      log.warning("%s: no '%s' descriptors: the '%s' split is left out", train_path, split, split)
      continue
    x = descriptors.as_descriptors(containers.pick(obj, train_path, split, "descriptors"),
                                   train_path, split, n=len(a["cluster"]), dim=dim)
    dim = x.shape[1]
    splits[split] = _train_examples(x, a)
  del obj
  if datasets is None:
    datasets = find_test_sets(root, feature)
  for ds in datasets:
    if not isinstance(ds, str) or not _DATASET_RE.fullmatch(ds) or ds == R1M \
        or f"{ds}_db" in splits:
      raise fail("<arguments>", "datasets", "distinct test set names of letters, digits, _ "
                 f"and - (not '{R1M}')", repr(ds))
    gnd_path = layout.gnd_file(root, ds)
    feats_path = layout.test_features_file(root, ds, feature)
    q, db, gnd = ground_truth.load_test_set(feats_path, gnd_path)
    if db.shape[1] != dim:
      raise fail(feats_path, "db",
                 f"descriptor size C={dim} (as the training descriptors)", f"C={db.shape[1]}")
    names = ground_truth.gnd_names(containers.load_container(gnd_path), gnd_path)
    splits[f"{ds}_db"] = _db_examples(db, names.get("imlist"))
    splits[f"{ds}_query"] = _query_examples(q, gnd, names.get("qimlist"))
  if r1m:
    splits[R1M] = _r1m_examples(layout.r1m_file(root, feature), dim)
  log.info("%s: packing %s into %s (splits %s)", root, feature, dst, ", ".join(splits))
  builder = _builder(tfds, feature, out_dir, dim, splits)
  tmp = tempfile.mkdtemp(prefix="csa_tfds_")  # TFDS's download dir: nothing is downloaded
  try:
    builder.download_and_prepare(download_dir=tmp)
  except InputError:
    raise
  except Exception as e:  # noqa: BLE001  (TFDS / ArrayRecord / OS failures: one line)
    raise fail(dst, "write", "a complete TFDS dataset", f"{type(e).__name__}: "
               f"{str(e).splitlines()[0] if str(e) else ''}") from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dst
