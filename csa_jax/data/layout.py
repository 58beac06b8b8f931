"""The one place that knows the data root's layout (docs/data.md), by name.

  <root>/annotations/retrieval-SfM-120k.{pkl,...}            rSfM120k training annotations
  <root>/train/<feature>.{pkl,pickle,npz,npy,json}           {'train': (n, C), 'val': (m, C)}
  <root>/test/<ds>/<feature>.{pkl,pickle,npz,npy,json}      {'db': (n, C), 'query': (q, C)}
  <root>/annotations/<ds>/gnd_<ds>.{pkl,pickle,json,npz,npy} revisited ground truth
                                                             (cnnimageretrieval-pytorch keeps it
                                                             in <root>/test/<ds>/: also read)
  <root>/test/r1m/<feature>.{npy,pkl,pickle,npz,json}        R1M distractors (.npy first: it is
                                                             memory-mapped)

Where a name has several files, the extensions are tried in the order above. Evaluation
(``test_set_files`` resolves every file of a run before anything is read, so a missing dataset
fails at once), ``convert-data``, the TFDS builder and the experiments all find files here.
"""

from __future__ import annotations

import dataclasses
import glob
import os

from csa_jax.errors import fail

FEATURE_EXTS = (".pkl", ".pickle", ".npz", ".npy", ".json")
GND_EXTS = (".pkl", ".pickle", ".json", ".npz", ".npy")
R1M_EXTS = (".npy", ".pkl", ".pickle", ".npz", ".json")
PICKLE_EXTS = (".pkl", ".pickle")
R1M_DIR = "r1m"
ANNOTATIONS = os.path.join("annotations", "retrieval-SfM-120k")


@dataclasses.dataclass(frozen=True)
class TestSetFiles:
  """The files of one test dataset under a data root."""

  __test__ = False  # not a pytest class, despite the name
  name: str
  features: str
  gnd: str


def find_file(bases: list[str], exts: tuple[str, ...] = FEATURE_EXTS) -> str:
  """The first ``base + ext`` that is a file, trying each base with every extension in order.

  Args:
    bases: paths without extension, in order of preference.
    exts: extensions, in order of preference.

  Returns:
    The path found; an ``InputError`` naming what was looked for if none exists.
  """
  for base in bases:
    for ext in exts:
      if os.path.isfile(base + ext):
        return base + ext
  raise fail(" or ".join(b + ".*" for b in bases), "file",
             f"one of {', '.join(exts)} (the data root layout, docs/data.md)", "no such file")


def check_name(name: str, field: str) -> str:
  """A dataset or descriptor-set name: one path component, not a file name."""
  if not name or name in (".", "..") or "/" in name or os.sep in name \
      or name.endswith(FEATURE_EXTS):
    raise fail("command line", field, "a name under --data ROOT (e.g. gl18, roxford5k), not a "
               "file path", repr(name))
  return name


def annotations_base(root: str) -> str:
  """``<root>/annotations/retrieval-SfM-120k``, without extension."""
  return os.path.join(os.fspath(root), ANNOTATIONS)


def train_base(root: str, feature: str) -> str:
  """``<root>/train/<feature>``, without extension."""
  return os.path.join(os.fspath(root), "train", feature)


def test_base(root: str, ds: str, feature: str) -> str:
  """``<root>/test/<ds>/<feature>``, without extension."""
  return os.path.join(os.fspath(root), "test", ds, feature)


def gnd_bases(root: str, ds: str) -> list[str]:
  """Where a test set's gnd file may be, without extension, in order of preference."""
  root = os.fspath(root)
  return [os.path.join(root, "annotations", ds, f"gnd_{ds}"),
          os.path.join(root, "test", ds, f"gnd_{ds}")]


def annotations_file(root: str) -> str:
  """The rSfM120k annotations file under ``root``."""
  return find_file([annotations_base(root)])


def train_file(root: str, feature: str) -> str:
  """The training descriptors of ``feature`` under ``root``."""
  return find_file([train_base(root, feature)])


def gnd_file(root: str, ds: str) -> str:
  """The gnd file of test set ``ds`` under ``root``."""
  return find_file(gnd_bases(root, ds), GND_EXTS)


def test_features_file(root: str, ds: str, feature: str) -> str:
  """The query and database descriptors of test set ``ds``."""
  return find_file([test_base(root, ds, feature)])


def r1m_file(root: str, features: str) -> str:
  """``<root>/test/r1m/<features>`` with the extension present (.npy preferred)."""
  return find_file([os.path.join(os.fspath(root), "test", R1M_DIR, features)], R1M_EXTS)


def test_set_files(root: str, features: str,
                   datasets: list[str] | None = None) -> list[TestSetFiles]:
  """Features and gnd file of each dataset, all resolved (and so all present) up front.

  Args:
    root: the data root.
    features: the descriptor set's name (``test/<ds>/<features>.*``).
    datasets: test dataset names (``roxford5k``, ``rparis6k``, ...); None: every test set
      under ``root`` with ``features`` descriptors and a gnd file (at least one).

  Returns:
    One ``TestSetFiles`` per dataset, in the order given (by name for None).
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise fail(root, "--data", "a data root directory (test/, annotations/)", "no such directory")
  check_name(features, "--features")
  present = test_set_names(root, features)
  if datasets is None:
    if not present:
      raise fail(root, "--features", f"test sets with {features} descriptors "
                 f"(test/<ds>/{features}.* beside a gnd file)", "none under this root")
    datasets = present
  out = []
  for ds in datasets:
    check_name(ds, "--datasets")
    if ds not in present:  # say what is missing, and which test sets the root does have
      has_features = any(os.path.isfile(test_base(root, ds, features) + e) for e in FEATURE_EXTS)
      missing = (f"gnd_{ds}.* (annotations/{ds}/ or test/{ds}/)" if has_features
                 else f"test/{ds}/{features}.*")
      raise fail(root, "--datasets", f"test sets with {features} descriptors and a gnd file "
                 f"(this root has: {', '.join(present) or 'none'})", f"'{ds}': no {missing}")
    out.append(TestSetFiles(ds, test_features_file(root, ds, features), gnd_file(root, ds)))
  return out


def feature_names(root: str, exts: tuple[str, ...] = (".pkl", ".pickle", ".npz")) -> list[str]:
  """The descriptor sets under ``root``: the names of ``train/<feature>.<ext>``, sorted."""
  names = set()
  for ext in exts:
    for p in glob.glob(os.path.join(glob.escape(os.fspath(root)), "train", "*" + ext)):
      names.add(os.path.basename(p)[:-len(ext)])
  return sorted(names)


def test_set_names(root: str, feature: str | None = None, *, with_gnd: bool = True) -> list[str]:
  """The test sets under ``root`` that have a gnd file (and ``feature`` descriptors), sorted.

  Args:
    root: the data root.
    feature: a descriptor set's name, or None for any.
    with_gnd: False lists the other ones instead: ``feature`` descriptors but no gnd file.
  """
  found = []
  for d in sorted(glob.glob(os.path.join(glob.escape(os.fspath(root)), "test", "*", ""))):
    ds = os.path.basename(os.path.dirname(d))
    if ds == R1M_DIR:
      continue
    if feature is not None and not any(os.path.isfile(test_base(root, ds, feature) + e)
                                       for e in FEATURE_EXTS):
      continue
    if any(os.path.isfile(b + e) for b in gnd_bases(root, ds) for e in GND_EXTS) == with_gnd:
      found.append(ds)
  return found


def feature_name(path: str) -> str:
  """A descriptor set's name, given as such or as its file: 'train/gl18.pkl' -> 'gl18'."""
  base = os.path.basename(os.fspath(path))
  for ext in (".pkl", ".pickle", ".npz", ".npy"):
    if base.endswith(ext):
      return base[:-len(ext)]
  return base
