"""Readers of the SPEC section 6 layouts: real pickles load, crafted ones never run, checks hold."""

import json
import os
import pickle

import numpy as np
import pytest

from csa_jax import data_io
from csa_jax.errors import InputError


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _feats(n, c, seed=0):
  return _unit(np.random.default_rng(seed).normal(size=(n, c)))


def _dump(path, obj):
  with open(path, "wb") as f:
    f.write(pickle.dumps(obj))
  return str(path)


def _gnd_obj(n_db=40, n_q=3):
  # As cnnimageretrieval's gnd_<ds>.pkl: Python lists of ints and a bbx per query.
  return {"imlist": [f"im{i}" for i in range(n_db)], "qimlist": [f"q{i}" for i in range(n_q)],
          "gnd": [{"bbx": [1.0, 2.0, 30.5, 40.0], "easy": [q, q + 1], "hard": [10 + q],
                   "junk": [] if q else [39]} for q in range(n_q)]}


def _annotations_obj(n=30, m=12):
  return {split: {"cids": [f"{split}{i}" for i in range(k)],
                  "cluster": [i // 3 for i in range(k)],
                  "qidxs": [0, 3, 6], "pidxs": [1, 4, 7]} for split, k in (("train", n),
                                                                            ("val", m))}


class TestRealLayouts:

  def test_test_set_pickles(self, tmp_path):
    db, q = _feats(40, 8), _feats(3, 8, seed=1)
    g = _dump(tmp_path / "gnd_x.pkl", _gnd_obj())
    f = _dump(tmp_path / "feat.pkl", {"db": db, "query": q})
    q2, db2, gnd = data_io.load_test_set(f, g)
    np.testing.assert_array_equal(db2, db)
    np.testing.assert_array_equal(q2, q)
    assert len(gnd) == 3
    np.testing.assert_array_equal(gnd[0]["easy"], [0, 1])
    np.testing.assert_array_equal(gnd[0]["junk"], [39])
    assert gnd[1]["junk"].dtype == np.int64 and gnd[1]["junk"].size == 0
    np.testing.assert_array_equal(gnd[2]["bbx"], [1.0, 2.0, 30.5, 40.0])

  def test_annotations_and_train_features_pickles(self, tmp_path):
    a = data_io.load_annotations(_dump(tmp_path / "ann.pkl", _annotations_obj()))
    assert a["train"]["cluster"].dtype == np.int32
    np.testing.assert_array_equal(a["train"]["cluster"], np.arange(30) // 3)
    np.testing.assert_array_equal(a["val"]["pidxs"], [1, 4, 7])
    assert a["train"]["cids"][5] == "train5"
    tr, va = _feats(30, 16), _feats(12, 16, seed=2)
    f = _dump(tmp_path / "gem.pkl", {"train": tr, "val": va})
    np.testing.assert_array_equal(data_io.load_descriptors(f, "train", n=30), tr)
    np.testing.assert_array_equal(data_io.load_descriptors(f, "val"), va)

  def test_r1m_pickle_and_memmap(self, tmp_path):
    x = _feats(200, 8)
    got = data_io.load_r1m(_dump(tmp_path / "r1m.pkl", x))
    np.testing.assert_array_equal(got, x)
    np.save(tmp_path / "r1m.npy", x)
    mm = data_io.load_r1m(tmp_path / "r1m.npy")
    assert isinstance(mm, np.memmap)
    np.testing.assert_array_equal(mm, x)
    # (C, n) on disk cannot be row-memory-mapped: read and transposed instead.
    np.save(tmp_path / "r1m_t.npy", x.T)
    got = data_io.load_r1m(tmp_path / "r1m_t.npy")
    assert not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, x)

  def test_same_content_as_npz_and_json(self, tmp_path):
    db, q = _feats(40, 8), _feats(3, 8, seed=1)
    _dump(tmp_path / "g.pkl", _gnd_obj())
    _dump(tmp_path / "f.pkl", {"db": db, "query": q})
    (tmp_path / "g.json").write_text(json.dumps(_gnd_obj()))
    np.savez(tmp_path / "f.npz", db=db, query=q)
    a = data_io.load_test_set(tmp_path / "f.pkl", tmp_path / "g.pkl")
    b = data_io.load_test_set(tmp_path / "f.npz", tmp_path / "g.json")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for ga, gb in zip(a[2], b[2]):
      for k in ("easy", "hard", "junk"):
        np.testing.assert_array_equal(ga[k], gb[k])
    (tmp_path / "ann.json").write_text(json.dumps(_annotations_obj()))
    ann = data_io.load_annotations(tmp_path / "ann.json")
    np.testing.assert_array_equal(ann["train"]["cluster"], np.arange(30) // 3)

  def test_format_told_by_content_not_name(self, tmp_path):
    x = _feats(20, 4)
    with open(tmp_path / "feat.dat", "wb") as f:  # an .npy under a foreign name
      np.save(f, x)
    np.testing.assert_array_equal(data_io.load_descriptors(tmp_path / "feat.dat"), x)


class TestCraftedPickles:
  """A pickle that would run code is refused before anything runs."""

  @pytest.mark.parametrize("how", ["os_system", "eval", "import", "nested"])
  def test_refused_without_running(self, tmp_path, how):
    marker = tmp_path / "pwned"

    class OsSystem:
      def __reduce__(self):
        return (os.system, (f"touch {marker}",))

    class Eval:
      def __reduce__(self):
        return (eval, (f"open({str(marker)!r}, 'w').close()",))

    class Import:  # an arbitrary importable callable: pathlib.Path.touch via a bound method
      def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(marker),))

    payload = {"os_system": OsSystem(), "eval": Eval(), "import": Import(),
               "nested": {"db": np.zeros((2, 2)), "query": [OsSystem()]}}[how]
    path = _dump(tmp_path / "evil.pkl", payload if how == "nested" else {"db": payload})
    for load in (lambda: data_io.load_descriptors(path, "db"),
                 lambda: data_io.load_gnd(path),
                 lambda: data_io.load_annotations(path),
                 lambda: data_io.load_test_set(path, path)):
      with pytest.raises(InputError, match="refused without running it"):
        load()
    assert not marker.exists()
    # Control: the payload is live, plain pickle would have run it.
    with open(path, "rb") as f:
      try:
        pickle.load(f)  # noqa: S301  (deliberately, on our own test payload)
      except Exception:  # the nested payload's return value may not unpickle further
        pass
    assert marker.exists()


class TestDescriptors:

  def test_orientation_by_count_size_norm_and_axis(self, tmp_path, capsys):
    x = _feats(6, 10)  # n < C: "smaller axis is C" alone would get this wrong
    np.save(tmp_path / "t.npy", x.T)
    np.testing.assert_array_equal(data_io.load_descriptors(tmp_path / "t.npy", n=6), x)
    assert "found (C, n)" in capsys.readouterr().err
    np.testing.assert_array_equal(data_io.load_descriptors(tmp_path / "t.npy", dim=10), x)
    # Unknown n and C: the axis whose vectors have unit norm holds the descriptors.
    np.testing.assert_array_equal(data_io.load_descriptors(tmp_path / "t.npy"), x)
    assert "unit norm" in capsys.readouterr().err
    np.save(tmp_path / "r.npy", x)
    np.testing.assert_array_equal(data_io.load_descriptors(tmp_path / "r.npy"), x)
    assert "found (n, C)" in capsys.readouterr().err

  def test_renormalises_with_warning(self, tmp_path, capsys):
    x = _feats(50, 8)
    scaled = (x * np.linspace(0.5, 3, 50)[:, None]).astype(np.float64)
    np.save(tmp_path / "s.npy", scaled)
    got = data_io.load_descriptors(tmp_path / "s.npy")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, x, atol=1e-6)
    assert "warning" in capsys.readouterr().err

  def test_test_set_query_orientation_from_gnd_count(self, tmp_path):
    # 3 queries of C=8 stored (C, n): only the gnd's query count can tell.
    db, q = _feats(40, 8), _feats(3, 8, seed=1) * 2
    g = _dump(tmp_path / "g.pkl", _gnd_obj())
    f = _dump(tmp_path / "f.pkl", {"db": db.T, "query": q.T})
    q2, db2, _ = data_io.load_test_set(f, g)
    assert q2.shape == (3, 8) and db2.shape == (40, 8)
    np.testing.assert_allclose(q2, _unit(q), atol=1e-6)


ERRORS = [
    # (description, content written, reader call, field expected in the message)
    ("3-D array", np.zeros((2, 3, 4), np.float32), "desc", "expected a 2-D"),
    ("NaN", np.full((4, 3), np.nan, np.float32), "desc", "expected finite values"),
    ("int dtype", np.ones((4, 3), np.int64), "desc", "floating-point"),
    ("zero row", np.zeros((5, 3), np.float32), "desc", "non-zero descriptors"),
    ("count", {"train": _feats(7, 4)}, "desc_n", "5 descriptors"),
    ("missing key", {"val": _feats(7, 4)}, "desc_n", "no such key"),
    ("empty gnd", {"gnd": []}, "gnd", "at least one query"),
    ("out of range", {"gnd": [{"easy": [0, 99], "hard": [], "junk": []}]}, "gnd",
     "indices in [0, 50)"),
    ("string index", {"gnd": [{"easy": ["a"], "hard": [], "junk": []}]}, "gnd",
     "integer indices"),
    ("missing hard", {"gnd": [{"easy": [1], "junk": []}]}, "gnd", "gnd[0].hard"),
    ("no cluster", {"train": {"cids": ["a"]}}, "ann", "train.cluster"),
    ("cids count", {"train": {"cids": ["a"], "cluster": [0, 1]}}, "ann", "train.cids"),
    ("qidx range", {"train": {"cluster": [0, 1], "qidxs": [5], "pidxs": [0]}}, "ann",
     "train.qidxs"),
]


@pytest.mark.parametrize("desc,content,reader,needle", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_one_line_naming_file_field_expected_found(tmp_path, desc, content, reader,
                                                              needle):
  del desc
  path = str(tmp_path / "bad.pkl")
  _dump(path, content)
  call = {"desc": lambda: data_io.load_descriptors(path),
          "desc_n": lambda: data_io.load_descriptors(path, "train", n=5),
          "gnd": lambda: data_io.load_gnd(path, n_db=50),
          "ann": lambda: data_io.load_annotations(path)}[reader]
  with pytest.raises(InputError) as e:
    call()
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(path + ": ")
  assert ": expected " in msg and ", found " in msg
  assert needle in msg


def test_truncated_and_empty_files(tmp_path):
  x = _feats(100, 8)
  np.save(tmp_path / "a.npy", x)
  data = (tmp_path / "a.npy").read_bytes()
  (tmp_path / "t.npy").write_bytes(data[:len(data) // 2])
  _dump(tmp_path / "a.pkl", {"db": x})
  (tmp_path / "t.pkl").write_bytes((tmp_path / "a.pkl").read_bytes()[:500])
  (tmp_path / "e.pkl").write_bytes(b"")
  (tmp_path / "t.json").write_text('{"gnd": [{"easy": [1')
  for name in ("t.npy", "t.pkl", "e.pkl", "t.json"):
    with pytest.raises(InputError, match=r"(file|pickle): expected .*found"):
      data_io.load_container(tmp_path / name)
  with pytest.raises(InputError, match="readable file"):
    data_io.load_container(tmp_path / "missing.npy")


def test_mismatched_test_set_counts(tmp_path):
  g = _dump(tmp_path / "g.pkl", _gnd_obj(n_db=40, n_q=3))
  cases = {
      "query": {"db": _feats(40, 8), "query": _feats(4, 8)},  # 4 queries, 3 gnd entries
      "db": {"db": _feats(41, 8), "query": _feats(3, 8)},  # 41 db, imlist names 40
  }
  for field, obj in cases.items():
    f = _dump(tmp_path / f"{field}.pkl", obj)
    with pytest.raises(InputError, match=f": {field}: expected"):
      data_io.load_test_set(f, g)
  f = _dump(tmp_path / "dim.pkl", {"db": _feats(40, 8), "query": _feats(3, 6)})
  with pytest.raises(InputError, match="descriptor size C=8"):
    data_io.load_test_set(f, g)
