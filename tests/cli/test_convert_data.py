"""``csa-jax convert-data``: real pickles convert to files the readers load identically; every
malformed input is one error line, exit code 2, no traceback and no output file."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from csa_jax.cli import main as cli
from csa_jax.data import ground_truth, large_descriptors


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _feats(n, c, seed=0):
  return _unit(np.random.default_rng(seed).normal(size=(n, c)))


def _dump(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(pickle.dumps(obj))
  return str(path)


def _gnd(n_db=40, n_q=3, **entry):
  return {"imlist": [f"im{i}" for i in range(n_db)], "qimlist": [f"q{i}" for i in range(n_q)],
          "gnd": [{"bbx": [0, 0, 5, 5], "easy": [q], "hard": [10 + q], "junk": [20 + q],
                   **entry} for q in range(n_q)]}


def _ann(n=30):
  return {"train": {"cids": [f"c{i}" for i in range(n)], "cluster": [i // 3 for i in range(n)],
                    "qidxs": [0, 3], "pidxs": [1, 4]},
          "val": {"cids": ["v0", "v1"], "cluster": [0, 0], "qidxs": [0], "pidxs": [1]}}


def _tree(root):
  """A docs/method.md section 6 tree of pickles, as the original tools write them."""
  _dump(f"{root}/annotations/retrieval-SfM-120k.pkl", _ann())
  _dump(f"{root}/annotations/roxf/gnd_roxf.pkl", _gnd())
  _dump(f"{root}/train/gem.pkl", {"train": _feats(30, 8).T, "val": _feats(2, 8, 1)})
  _dump(f"{root}/test/roxf/gem.pkl", {"db": _feats(40, 8, 2), "query": _feats(3, 8, 3)})
  _dump(f"{root}/test/r1m/gem.pkl", _feats(50, 8, 4))


def _run(args, capsys):
  rc = cli.main(["convert-data", *args])
  cap = capsys.readouterr()
  return rc, cap.out, cap.err


def test_converts_each_kind_of_file(tmp_path, capsys):
  root = str(tmp_path)
  _tree(root)
  for src, suffix in (("annotations/retrieval-SfM-120k", ".json"),
                      ("annotations/roxf/gnd_roxf", ".json"), ("train/gem", ".npz"),
                      ("test/roxf/gem", ".npz"), ("test/r1m/gem", ".npy")):
    rc, out, _ = _run([f"{root}/{src}.pkl"], capsys)
    assert rc == 0 and f"wrote {root}/{src}{suffix}" in out
  a = ground_truth.load_test_set(f"{root}/test/roxf/gem.pkl",
                                 f"{root}/annotations/roxf/gnd_roxf.pkl")
  b = ground_truth.load_test_set(f"{root}/test/roxf/gem.npz",
                                 f"{root}/annotations/roxf/gnd_roxf.json")
  for x, y in zip(a[:2], b[:2]):
    np.testing.assert_array_equal(x, y)
  assert [{k: v.tolist() for k, v in g.items()} for g in a[2]] == \
         [{k: v.tolist() for k, v in g.items()} for g in b[2]]
  # Training features are written (n, C) whatever the pickle held.
  with np.load(f"{root}/train/gem.npz") as z:
    np.testing.assert_array_equal(z["train"], _feats(30, 8))
  assert json.load(open(f"{root}/annotations/retrieval-SfM-120k.json"))["train"]["cids"][4] == "c4"
  # R1M becomes a float32 (n, C) .npy that the reader memory-maps.
  assert isinstance(large_descriptors.load_r1m(f"{root}/test/r1m/gem.npy"), np.memmap)


def test_converts_a_tree(tmp_path, capsys):
  src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
  _tree(src)
  rc, out, _ = _run(["--root", src, "--out-root", dst], capsys)
  assert rc == 0 and out.count("wrote ") == 5
  got = sorted(os.path.relpath(os.path.join(d, f), dst) for d, _, fs in os.walk(dst) for f in fs)
  assert got == ["annotations/retrieval-SfM-120k.json", "annotations/roxf/gnd_roxf.json",
                 "test/r1m/gem.npy", "test/roxf/gem.npz", "train/gem.npz"]


def _evil(path, marker):
  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))
  return _dump(path, {"db": Evil()})


# (name, files to write {relative path: content}, extra args, substrings of the error line)
CASES = [
    ("wrong shape", {"f.pkl": {"db": np.zeros((2, 3, 4), np.float32), "query": _feats(3, 8)}},
     [], ["f.pkl: db: expected a 2-D", "found shape (2, 3, 4)"]),
    ("NaN", {"f.pkl": {"db": np.full((40, 8), np.nan, np.float32), "query": _feats(3, 8)}},
     [], ["f.pkl: db: expected finite values", "found 320 NaN/inf"]),
    ("missing key", {"f.pkl": {"db": _feats(40, 8)}, "g.pkl": _gnd()}, ["--gnd", "g.pkl"],
     ["f.pkl: query: expected the query descriptors under key 'query'", "found no such key"]),
    ("index out of range", {"g.pkl": _gnd(easy=[45])}, [],
     ["g.pkl: gnd[0].easy: expected indices in [0, 40)", "found 1 out of range (e.g. 45)"]),
    ("truncated pickle", {"f.pkl": b"truncated"}, [],
     ["f.pkl: pickle: expected a complete pickle", "found an unreadable stream"]),
    ("truncated .npy", {"f.pkl": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order'"}, [],
     ["f.pkl: file: expected a complete .npy file", "found unreadable"]),
    ("wrong dtype", {"f.pkl": {"db": np.ones((40, 8), np.int32), "query": _feats(3, 8)}}, [],
     ["f.pkl: db: expected floating-point descriptors", "found dtype int32"]),
    ("empty gnd", {"g.pkl": {"imlist": [], "gnd": []}}, [],
     ["g.pkl: gnd: expected at least one query", "found an empty list"]),
    ("queries vs gnd", {"f.pkl": {"db": _feats(40, 8), "query": _feats(4, 8)}, "g.pkl": _gnd()},
     ["--gnd", "g.pkl"], ["f.pkl: query: expected 3 descriptors", "found shape (4, 8)"]),
    ("db vs imlist", {"f.pkl": {"db": _feats(41, 8), "query": _feats(3, 8)}, "g.pkl": _gnd()},
     ["--gnd", "g.pkl"], ["f.pkl: db: expected 40 descriptors", "found shape (41, 8)"]),
    ("train vs annotations", {"f.pkl": {"train": _feats(29, 8)}, "a.pkl": _ann()},
     ["--annotations", "a.pkl"], ["f.pkl: train: expected 30 descriptors", "found shape (29, 8)"]),
    ("query size vs db", {"f.pkl": {"db": _feats(40, 8), "query": _feats(3, 6)}, "g.pkl": _gnd()},
     ["--gnd", "g.pkl"], ["f.pkl: query: expected descriptor size C=8", "found C=6"]),
    ("missing cluster", {"a.pkl": {"train": {"cids": ["a", "b"]}}}, [],
     ["a.pkl: train.cluster: expected one cluster id per image", "found no such key"]),
    ("cids vs cluster", {"a.pkl": {"train": {"cids": ["a"], "cluster": [0, 1]}}}, [],
     ["a.pkl: train.cids: expected 2 image ids", "found 1"]),
    ("missing hard", {"g.pkl": {"gnd": [{"easy": [1], "junk": []}]}}, [],
     ["g.pkl: gnd[0].hard: expected a list of db indices", "found no such key"]),
    ("string indices", {"g.pkl": {"gnd": [{"easy": ["3"], "hard": [], "junk": []}]}}, [],
     ["g.pkl: gnd[0].easy: expected integer indices", "found dtype <U1"]),
    ("all-zero descriptor", {"f.pkl": np.zeros((60, 8), np.float32)}, [],
     ["f.pkl: descriptors: expected non-zero descriptors", "found 60 all-zero rows"]),
    ("empty file", {"f.pkl": b""}, [], ["f.pkl: file: expected a .npy, .npz, pickle or JSON",
                                        "found an empty file"]),
    ("not a known layout", {"f.pkl": ["a", "b"]}, [],
     ["f.pkl: file: expected a gnd file", "found a list of 2 items"]),
    ("missing file", {}, [], ["f.pkl: file: expected a readable file", "found No such file"]),
    ("crafted pickle", {"f.pkl": "EVIL"}, [],
     ["f.pkl: pickle: expected only data", "found a reference to posix.system",
      "refused without running it"]),
]


@pytest.mark.parametrize("name,files,extra,needles", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line_exit_2_no_output(tmp_path, capsys, name, files, extra,
                                                      needles):
  del name
  d = tmp_path / "in"
  d.mkdir()
  marker = tmp_path / "pwned"
  for rel, content in files.items():
    if isinstance(content, str) and content == "EVIL":
      _evil(str(d / rel), marker)
    elif isinstance(content, bytes):
      (d / rel).write_bytes(content)
    else:
      _dump(str(d / rel), content)
  before = sorted(os.listdir(d))
  out = tmp_path / "out" / "converted.npz"
  args = [str(d / "f.pkl") if "f.pkl" in files or not files else str(d / next(iter(files))),
          "--out", str(out)] + [str(d / a) if a.endswith(".pkl") else a for a in extra]
  rc, stdout, stderr = _run(args, capsys)
  assert rc == 2
  assert "Traceback" not in stderr and stdout == ""
  lines = stderr.strip().splitlines()
  errors = [ln for ln in lines if ln.startswith("csa-jax convert-data: error: ")]
  assert errors == [lines[-1]]  # one error line, last; anything before is a "csa-jax:" note
  assert all(ln.startswith("csa-jax: ") for ln in lines[:-1])
  for needle in needles:
    assert needle in errors[0], errors[0]
  assert ": expected " in errors[0] and ", found " in errors[0]
  assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
  assert sorted(os.listdir(d)) == before  # no temporary or partial file beside the inputs
  assert not marker.exists()


def test_tree_with_one_bad_file_writes_nothing(tmp_path, capsys):
  root = str(tmp_path / "src")
  _tree(root)
  _dump(f"{root}/test/r1m/gem.pkl", np.full((50, 8), np.inf, np.float32))  # converted last
  rc, stdout, stderr = _run(["--root", root, "--out-root", str(tmp_path / "dst")], capsys)
  assert rc == 2 and "test/r1m/gem.pkl: descriptors: expected finite values" in stderr
  assert stdout == "" and not (tmp_path / "dst").exists()


@pytest.mark.slow
def test_real_process_exit_code_and_no_traceback(tmp_path):
  bad = _dump(str(tmp_path / "g.pkl"), {"gnd": []})
  p = subprocess.run([sys.executable, "-m", "csa_jax.cli.main", "convert-data", bad], text=True,
                     capture_output=True, timeout=120)
  assert p.returncode == 2
  assert p.stderr.strip() == (f"csa-jax convert-data: error: {bad}: gnd: expected at least one "
                              "query, found an empty list")
  assert not os.path.exists(str(tmp_path / "g.json"))


def test_failed_write_leaves_no_output_and_no_temporary(tmp_path, capsys, monkeypatch):
  from csa_jax.data import convert
  src, dst = str(tmp_path / "src"), tmp_path / "dst"
  _tree(src)

  def full_disk(path, arr):  # the last output (R1M, .npy) fails half-way
    with open(path, "wb") as f:
      f.write(b"\x93NUMPY partial")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(convert, "save_npy", full_disk)
  rc, stdout, stderr = _run(["--root", src, "--out-root", str(dst)], capsys)
  assert rc == 2 and stdout == ""
  assert stderr.strip().splitlines()[-1].startswith("csa-jax convert-data: error: ")
  assert ("test/r1m/gem.npy: --out-root: expected a writable output file, found No space "
          "left") in stderr
  # The four outputs written before the failure were never renamed into place.
  assert [p for p in dst.rglob("*") if p.is_file()] == []
  assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("bad", ["out_is_dir", "out_parent_is_file", "out_with_root",
                                 "out_root_with_src"])
def test_bad_output_paths_fail_before_reading(tmp_path, capsys, bad):
  (tmp_path / "afile").write_text("x")
  (tmp_path / "adir").mkdir()
  missing = str(tmp_path / "missing.pkl")  # never read: the output path fails first
  args, needle = {
      "out_is_dir": ([missing, "--out", str(tmp_path / "adir")],
                     "adir: --out: expected a file path, found a directory"),
      "out_parent_is_file": ([missing, "--out", str(tmp_path / "afile" / "x.npz")],
                             "x.npz: --out: expected a path whose parent is a directory"),
      "out_with_root": (["--root", str(tmp_path), "--out", "x.npz"],
                        "command line: --out: expected --out-root DIR"),
      "out_root_with_src": ([missing, "--out-root", str(tmp_path)],
                            "command line: --out-root: expected --root DIR"),
  }[bad]
  before = sorted(os.listdir(tmp_path))
  rc, stdout, stderr = _run(args, capsys)
  assert rc == 2 and stdout == ""
  assert stderr.strip().splitlines() == [stderr.strip().splitlines()[-1]]
  assert needle in stderr
  assert sorted(os.listdir(tmp_path)) == before and os.listdir(tmp_path / "adir") == []


def test_default_output_path_checked_before_writing(tmp_path, capsys):
  src = _dump(str(tmp_path / "gnd_x.pkl"), _gnd())
  (tmp_path / "gnd_x.json").mkdir()  # where SRC's .json would go
  rc, stdout, stderr = _run([src], capsys)
  assert rc == 2 and stdout == ""
  assert "gnd_x.json: --out: expected a file path, found a directory" in stderr
  assert sorted(os.listdir(tmp_path)) == ["gnd_x.json", "gnd_x.pkl"]


def test_gnd_names_converted_as_text(tmp_path, capsys):
  g = _gnd()
  g["imlist"] = np.array([f"im{i}" for i in range(40)])  # numpy text array, not a list
  g["qimlist"] = [b"q0", b"q1", b"q2"]
  src = _dump(str(tmp_path / "g.pkl"), g)
  rc, _, _ = _run([src], capsys)
  assert rc == 0
  js = json.load(open(tmp_path / "g.json"))
  assert js["imlist"][39] == "im39" and js["qimlist"] == ["q0", "q1", "q2"]
