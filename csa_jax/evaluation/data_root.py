"""Test sets of a data root in the original layout (docs/method.md section 6), by name.

  <root>/test/<ds>/<features>.{pkl,pickle,npz,npy,json}        {'db': (n, C), 'query': (q, C)}
  <root>/annotations/<ds>/gnd_<ds>.{pkl,pickle,json,npz,npy}   (cnnimageretrieval-pytorch keeps
                                                                it in <root>/test/<ds>/: also read)
  <root>/test/r1m/<features>.{npy,pkl,pickle,npz,json}         R1M distractors (.npy first: it
                                                                is memory-mapped)

``test_set_files`` resolves every file of a run before anything is read, so a missing dataset
fails at once, not after the first one's evaluation.
"""

from __future__ import annotations

import dataclasses
import os

from csa_jax.errors import fail

FEATURE_EXTS = (".pkl", ".pickle", ".npz", ".npy", ".json")
GND_EXTS = (".pkl", ".pickle", ".json", ".npz", ".npy")
R1M_EXTS = (".npy", ".pkl", ".pickle", ".npz", ".json")
R1M_DIR = "r1m"


@dataclasses.dataclass(frozen=True)
class TestSetFiles:
  """The files of one test dataset under a data root."""

  __test__ = False  # not a pytest class, despite the name
  name: str
  features: str
  gnd: str


def find_file(bases: list[str], exts: tuple[str, ...]) -> str:
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
             f"one of {', '.join(exts)} (docs/method.md section 6 layout)", "no such file")


def check_name(name: str, field: str) -> str:
  """A dataset or descriptor-set name: one path component, not a file name."""
  if not name or name in (".", "..") or "/" in name or os.sep in name \
      or name.endswith(FEATURE_EXTS):
    raise fail("command line", field, "a name under --data ROOT (e.g. gl18, roxford5k), not a "
               "file path", repr(name))
  return name


def test_set_files(root: str, features: str, datasets: list[str]) -> list[TestSetFiles]:
  """Features and gnd file of each dataset, all resolved (and so all present) up front.

  Args:
    root: the data root.
    features: the descriptor set's name (``test/<ds>/<features>.*``).
    datasets: test dataset names (``roxford5k``, ``rparis6k``, ...).

  Returns:
    One ``TestSetFiles`` per dataset, in the order given.
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise fail(root, "--data", "a data root directory (test/, annotations/)", "no such directory")
  check_name(features, "--features")
  out = []
  for ds in datasets:
    check_name(ds, "--datasets")
    feats = find_file([os.path.join(root, "test", ds, features)], FEATURE_EXTS)
    gnd = find_file([os.path.join(root, "annotations", ds, f"gnd_{ds}"),
                     os.path.join(root, "test", ds, f"gnd_{ds}")], GND_EXTS)
    out.append(TestSetFiles(ds, feats, gnd))
  return out


def r1m_file(root: str, features: str) -> str:
  """``<root>/test/r1m/<features>`` with the extension present (.npy preferred)."""
  return find_file([os.path.join(os.fspath(root), "test", R1M_DIR, features)], R1M_EXTS)
