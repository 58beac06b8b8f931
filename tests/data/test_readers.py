"""Readers of the docs/method.md section 6 layouts: real pickles load, crafted ones never run,
checks hold."""

import io
import json
import logging
import os
import pickle
import re

import numpy as np
import pytest

from csa_jax import log
from csa_jax.data import annotations, descriptors, ground_truth, large_descriptors
from csa_jax.errors import InputError
from csa_jax.formats import containers, npyio
from npy_craft import deflate_bomb, npy_bytes, npz_member, zip_bytes  # hand-made bytes


class _Notes:
  """The csa_jax log lines as the CLI shows them on stderr; ``read`` gives those since the last."""

  def __init__(self):
    self.stream, self._seen = io.StringIO(), 0

  def read(self) -> str:
    text = self.stream.getvalue()[self._seen:]
    self._seen += len(text)
    return text


@pytest.fixture
def notes():
  logger = logging.getLogger(log.ROOT)
  handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
  n = _Notes()
  log.setup(logging.INFO, n.stream)
  yield n
  logger.handlers[:] = handlers
  logger.setLevel(level)
  logger.propagate = propagate


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
    q2, db2, gnd = ground_truth.load_test_set(f, g)
    np.testing.assert_array_equal(db2, db)
    np.testing.assert_array_equal(q2, q)
    assert len(gnd) == 3
    np.testing.assert_array_equal(gnd[0]["easy"], [0, 1])
    np.testing.assert_array_equal(gnd[0]["junk"], [39])
    assert gnd[1]["junk"].dtype == np.int64 and gnd[1]["junk"].size == 0
    np.testing.assert_array_equal(gnd[2]["bbx"], [1.0, 2.0, 30.5, 40.0])

  def test_annotations_and_train_features_pickles(self, tmp_path):
    a = annotations.load_annotations(_dump(tmp_path / "ann.pkl", _annotations_obj()))
    assert a["train"]["cluster"].dtype == np.int32
    np.testing.assert_array_equal(a["train"]["cluster"], np.arange(30) // 3)
    np.testing.assert_array_equal(a["val"]["pidxs"], [1, 4, 7])
    assert a["train"]["cids"][5] == "train5"
    tr, va = _feats(30, 16), _feats(12, 16, seed=2)
    f = _dump(tmp_path / "gem.pkl", {"train": tr, "val": va})
    np.testing.assert_array_equal(descriptors.load_descriptors(f, "train", n=30), tr)
    np.testing.assert_array_equal(descriptors.load_descriptors(f, "val"), va)

  def test_r1m_pickle_and_memmap(self, tmp_path):
    x = _feats(200, 8)
    got = large_descriptors.load_r1m(_dump(tmp_path / "r1m.pkl", x))
    np.testing.assert_array_equal(got, x)
    np.save(tmp_path / "r1m.npy", x)
    mm = large_descriptors.load_r1m(tmp_path / "r1m.npy")
    assert isinstance(mm, np.memmap)
    np.testing.assert_array_equal(mm, x)
    # (C, n) on disk cannot be row-memory-mapped: read and transposed instead.
    np.save(tmp_path / "r1m_t.npy", x.T)
    got = large_descriptors.load_r1m(tmp_path / "r1m_t.npy")
    assert not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, x)

  def test_same_content_as_npz_and_json(self, tmp_path):
    db, q = _feats(40, 8), _feats(3, 8, seed=1)
    _dump(tmp_path / "g.pkl", _gnd_obj())
    _dump(tmp_path / "f.pkl", {"db": db, "query": q})
    (tmp_path / "g.json").write_text(json.dumps(_gnd_obj()))
    np.savez(tmp_path / "f.npz", db=db, query=q)
    a = ground_truth.load_test_set(tmp_path / "f.pkl", tmp_path / "g.pkl")
    b = ground_truth.load_test_set(tmp_path / "f.npz", tmp_path / "g.json")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for ga, gb in zip(a[2], b[2]):
      for k in ("easy", "hard", "junk"):
        np.testing.assert_array_equal(ga[k], gb[k])
    (tmp_path / "ann.json").write_text(json.dumps(_annotations_obj()))
    ann = annotations.load_annotations(tmp_path / "ann.json")
    np.testing.assert_array_equal(ann["train"]["cluster"], np.arange(30) // 3)

  def test_format_told_by_content_not_name(self, tmp_path):
    x = _feats(20, 4)
    with open(tmp_path / "feat.dat", "wb") as f:  # an .npy under a foreign name
      np.save(f, x)
    np.testing.assert_array_equal(descriptors.load_descriptors(tmp_path / "feat.dat"), x)


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
    for load in (lambda: descriptors.load_descriptors(path, "db"),
                 lambda: ground_truth.load_gnd(path),
                 lambda: annotations.load_annotations(path),
                 lambda: ground_truth.load_test_set(path, path)):
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

  def test_orientation_by_count_size_norm_and_axis(self, tmp_path, notes):
    x = _feats(6, 10)  # n < C: "smaller axis is C" alone would get this wrong
    np.save(tmp_path / "t.npy", x.T)
    np.testing.assert_array_equal(descriptors.load_descriptors(tmp_path / "t.npy", n=6), x)
    assert "found (C, n)" in notes.read()
    np.testing.assert_array_equal(descriptors.load_descriptors(tmp_path / "t.npy", dim=10), x)
    # Unknown n and C: the axis whose vectors have unit norm holds the descriptors.
    np.testing.assert_array_equal(descriptors.load_descriptors(tmp_path / "t.npy"), x)
    assert "unit norm" in notes.read()
    np.save(tmp_path / "r.npy", x)
    np.testing.assert_array_equal(descriptors.load_descriptors(tmp_path / "r.npy"), x)
    assert "found" not in notes.read()  # stored (n, C), the usual: only with --verbose

  def test_renormalises_with_warning(self, tmp_path, notes):
    x = _feats(50, 8)
    scaled = (x * np.linspace(0.5, 3, 50)[:, None]).astype(np.float64)
    np.save(tmp_path / "s.npy", scaled)
    got = descriptors.load_descriptors(tmp_path / "s.npy")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, x, atol=1e-6)
    assert re.search(r"^csa-jax: \d\d:\d\d:\d\d warning: ", notes.read(), re.M)

  def test_test_set_query_orientation_from_gnd_count(self, tmp_path):
    # 3 queries of C=8 stored (C, n): only the gnd's query count can tell.
    db, q = _feats(40, 8), _feats(3, 8, seed=1) * 2
    g = _dump(tmp_path / "g.pkl", _gnd_obj())
    f = _dump(tmp_path / "f.pkl", {"db": db.T, "query": q.T})
    q2, db2, _ = ground_truth.load_test_set(f, g)
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
  call = {"desc": lambda: descriptors.load_descriptors(path),
          "desc_n": lambda: descriptors.load_descriptors(path, "train", n=5),
          "gnd": lambda: ground_truth.load_gnd(path, n_db=50),
          "ann": lambda: annotations.load_annotations(path)}[reader]
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
      containers.load_container(tmp_path / name)
  with pytest.raises(InputError, match="readable file"):
    containers.load_container(tmp_path / "missing.npy")


def test_mismatched_test_set_counts(tmp_path):
  g = _dump(tmp_path / "g.pkl", _gnd_obj(n_db=40, n_q=3))
  cases = {
      "query": {"db": _feats(40, 8), "query": _feats(4, 8)},  # 4 queries, 3 gnd entries
      "db": {"db": _feats(41, 8), "query": _feats(3, 8)},  # 41 db, imlist names 40
  }
  for field, obj in cases.items():
    f = _dump(tmp_path / f"{field}.pkl", obj)
    with pytest.raises(InputError, match=f": {field}: expected"):
      ground_truth.load_test_set(f, g)
  f = _dump(tmp_path / "dim.pkl", {"db": _feats(40, 8), "query": _feats(3, 6)})
  with pytest.raises(InputError, match="descriptor size C=8"):
    ground_truth.load_test_set(f, g)


# ----------------------------------------------------------------------------------------------
# npyio: the validated .npy / .npz reader.


class TestNpyio:

  @pytest.mark.parametrize("arr", [
      np.arange(12, dtype=np.float32).reshape(3, 4),
      np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
      np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian stays readable
      np.array([True, False]),
      np.zeros((0, 5), np.float32),
      np.array('{"anchors": 8}'),  # 0-d text, as exports store their config
      np.array([b"im0", b"im1"]),
  ], ids=["f32", "fortran", "big_endian", "bool", "empty", "text", "bytes"])
  def test_reads_what_numpy_writes(self, tmp_path, arr):
    np.save(tmp_path / "a.npy", arr)
    got = npyio.load_npy(tmp_path / "a.npy")
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    mm = npyio.load_npy(tmp_path / "a.npy", mmap=True)
    np.testing.assert_array_equal(mm, arr)
    assert isinstance(mm, np.memmap) == (arr.size > 0)
    for save in (np.savez, np.savez_compressed):
      save(tmp_path / "z.npz", x=arr, param__w=np.ones(3, np.float16))
      z = npyio.load_npz(tmp_path / "z.npz")
      assert sorted(z) == ["param__w", "x"]
      np.testing.assert_array_equal(z["x"], arr)
      assert z["x"].dtype == arr.dtype

  def test_export_member_names_with_slashes(self, tmp_path):
    np.savez(tmp_path / "e.npz", **{"param/blocks.0.w": np.ones((2, 2), np.float32),
                                    "model_config": np.array("{}")})
    z = npyio.load_npz(tmp_path / "e.npz")
    assert str(z["model_config"]) == "{}" and z["param/blocks.0.w"].shape == (2, 2)

  def _bad_npy(self, tmp_path, data, *needles):
    (tmp_path / "b.npy").write_bytes(data)
    for mmap in (False, True):
      with pytest.raises(InputError) as e:
        npyio.load_npy(tmp_path / "b.npy", mmap=mmap)
      msg = str(e.value)
      assert msg.startswith(str(tmp_path / "b.npy") + ": file: expected ") and "\n" not in msg
      for n in needles:
        assert n in msg, msg

  def test_npy_header_checked_before_allocating(self, tmp_path):
    self._bad_npy(tmp_path, npy_bytes((100_000, 1_000_000)), "372.5 GiB", "found 0 bytes")
    self._bad_npy(tmp_path, npy_bytes((2**62, 2**62)), "found 0 bytes")  # no int64 overflow
    self._bad_npy(tmp_path, npy_bytes((-1, 4), data=bytes(16)), "non-negative dimensions")
    self._bad_npy(tmp_path, npy_bytes((2, 2), data=bytes(15)), "found 15 bytes", "truncated")
    self._bad_npy(tmp_path, npy_bytes((2, 2), data=bytes(17)), "found 17 bytes", "extra bytes")
    self._bad_npy(tmp_path, npy_bytes((2, 2), version=(2, 0), header_len=2**31),
                  "header of at most")
    self._bad_npy(tmp_path, npy_bytes((2, 2), version=(3, 0)), "version 1.0 or 2.0")
    self._bad_npy(tmp_path, npy_bytes((2,), descr="|O", data=bytes(16)), "object array")
    self._bad_npy(tmp_path, npy_bytes((2,), descr=[("a", "<f4")], data=bytes(8)),
                  "a numeric (bool, int, float) or text array")
    self._bad_npy(tmp_path, npy_bytes((2,), descr="<M8[s]", data=bytes(16)), "dtype datetime64")
    self._bad_npy(tmp_path, npy_bytes((1,) * 40, data=bytes(4)), "at most 32 dimensions")
    self._bad_npy(tmp_path, npy_bytes((), descr="<U100000000", data=bytes(16)), "text of at most")
    self._bad_npy(tmp_path, b"\x93NUMPY\x01\x00\x10", "ends inside the header")
    self._bad_npy(tmp_path, b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'", "header of 15 of 16 bytes")
    self._bad_npy(tmp_path, npy_bytes((2,))[:10] + b"[" * 100 + b"]" * 100 + b"\n" * 8,
                  "unreadable header")

  def _bad_npz(self, tmp_path, data, field, *needles):
    (tmp_path / "b.npz").write_bytes(data)
    with pytest.raises(InputError) as e:
      npyio.load_npz(tmp_path / "b.npz")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'b.npz'}: {field}: expected ") and "\n" not in msg, msg
    for n in needles:
      assert n in msg, msg

  def test_npz_members_checked_before_allocating(self, tmp_path, monkeypatch):
    ok = npz_member("query.npy", npy_bytes((1, 2), data=bytes(8)))
    huge = npy_bytes((100_000, 1_000_000))
    self._bad_npz(tmp_path, zip_bytes([ok, npz_member("db.npy", huge)]), "db", "372.5 GiB",
                  "declared size")
    # The zip entry and the header agree on 3.8 GiB; the 75 stored bytes cannot inflate to it.
    self._bad_npz(tmp_path, zip_bytes([npz_member("db.npy", huge[:80], size=2**32 - 1)]), "db",
                  "4294967295 bytes declared", "zip bomb")
    # Declared size right, stream shorter: reading stops where the data does.
    raw = npy_bytes((4, 4), data=bytes(64))
    short = ("db.npy", npz_member("x.npy", raw[:100])[1], 8, 0, len(raw))
    self._bad_npz(tmp_path, zip_bytes([short]), "file", "unreadable")
    crc = ("db.npy", npz_member("x.npy", raw)[1], 8, 12345, len(raw))
    self._bad_npz(tmp_path, zip_bytes([crc]), "file", "CRC")
    self._bad_npz(tmp_path, zip_bytes([npz_member("db.npy", npy_bytes((2,), descr="|O",
                                                                      data=bytes(16)))]),
                  "db", "object array")
    self._bad_npz(tmp_path, zip_bytes([npz_member("../../etc/passwd", raw)]), "file",
                  "'<key>.npy'", "passwd")
    self._bad_npz(tmp_path, zip_bytes([npz_member("x" * 300 + ".npy", raw)]), "file",
                  "at most 256")
    self._bad_npz(tmp_path, zip_bytes([npz_member("db.npy", raw)] * 2), "db", "the key twice")
    self._bad_npz(tmp_path, zip_bytes([("db.npy", raw, 12, 0, len(raw))]), "db",
                  "compression method 12")
    monkeypatch.setattr(npyio, "MAX_MEMBERS", 3)
    many = [npz_member(f"a{i}.npy", raw) for i in range(4)]
    self._bad_npz(tmp_path, zip_bytes(many), "file", "at most 3 arrays", "4 members")
    self._bad_npz(tmp_path, b"PK\x03\x04 not a zip", "file", "a complete .npz file")

  def test_honest_bomb_refused_by_memory_left(self, tmp_path, monkeypatch):
    head = npy_bytes((64 << 20 >> 3, 2), descr="<f4")  # 64 MiB of zeros in about 66 KB
    bomb = zip_bytes([("db.npy", deflate_bomb(head, 64), 8, 0, len(head) + (64 << 20))])
    assert len(bomb) < 100_000
    (tmp_path / "b.npz").write_bytes(bomb)
    monkeypatch.setattr(npyio, "_memory_left", lambda: 32 << 20)
    with pytest.raises(InputError, match=r"b\.npz: db: expected an array that fits in the memory "
                                         r"left, 32 MiB .*found 64 MiB"):
      npyio.load_npz(tmp_path / "b.npz")

  def test_memory_left_is_positive_here(self):
    left = npyio._memory_left()
    assert left is None or left > 0

  def test_data_io_uses_npyio(self, tmp_path):
    (tmp_path / "f.npz").write_bytes(zip_bytes([npz_member("db.npy",
                                                           npy_bytes((100_000, 1_000_000)))]))
    with pytest.raises(InputError, match="f.npz: db: expected a complete .npy file: 372.5 GiB"):
      descriptors.load_descriptors(tmp_path / "f.npz", "db")


# ----------------------------------------------------------------------------------------------
# Finiteness as used, normalisation without overflow.


class TestFiniteAsUsed:

  def test_float64_beyond_float32_names_row(self):
    x = _feats(20, 6).astype(np.float64)
    x[13, 2] = 1e300
    with pytest.raises(InputError) as e:
      descriptors.as_descriptors(x, "f.npz", "db")
    assert str(e.value) == ("f.npz: db: expected finite values (as float32), found 1 NaN/inf "
                            "values in 1 row (first: row 13: 1e+300 is beyond the float32 range "
                            "+-3.4e38)")

  def test_nonfinite_row_named_in_the_used_orientation(self):
    x = _feats(20, 6)
    x[11, 4] = np.nan
    x[15, 0] = np.inf
    with pytest.raises(InputError, match=r"found 2 NaN/inf values in 2 rows \(first: row 11: "
                                         r"NaN\)"):
      descriptors.as_descriptors(x.T.copy(), "f", "db", n=20)  # stored (C, n)

  def test_float32_near_max_normalises_in_float64(self, notes):
    x = _feats(30, 8).astype(np.float64)
    big = (x * (3e38 / np.abs(x).max(1, keepdims=True))).astype(np.float32)
    got = descriptors.as_descriptors(big, "f", "db")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, x, atol=1e-6)  # the old float32 norm gave inf, rows of 0
    assert "re-normalising" in notes.read()

  def test_tiny_rows_are_directions_zero_rows_are_not(self):
    x = _feats(10, 4).astype(np.float64)
    got = descriptors.as_descriptors((x * 1e-40).astype(np.float32), "f", "db")  # subnormal float32
    np.testing.assert_allclose(got, x, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    x[7] = 0
    with pytest.raises(InputError, match=r"1 all-zero rows \(first: row 7\)"):
      descriptors.as_descriptors(x, "f", "db")

  def test_normalises_in_blocks(self, monkeypatch):
    monkeypatch.setattr(descriptors, "BLOCK_BYTES", 8 * 4 * 3)  # 3 rows per block
    x = _feats(10, 4).astype(np.float64) * np.arange(1, 11)[:, None]
    np.testing.assert_allclose(descriptors.as_descriptors(x, "f", "db"), _unit(x), atol=1e-6)
    x[8, 1] = np.nan
    with pytest.raises(InputError, match=r"row 8: NaN"):
      descriptors.as_descriptors(x, "f", "db")

  def test_non_array_descriptors(self):
    for v, found in (({"a": 1}, "found a dict"), (5, "found an int"),
                     ([[1.0, 2.0], [3.0]], "found a list of 2 items that is not a rectangular")):
      with pytest.raises(InputError, match=f"f: db: expected a 2-D array of descriptors, {found}"):
        descriptors.as_descriptors(v, "f", "db")


class TestR1M:

  def test_scan_reports_first_bad_row_across_blocks(self, tmp_path):
    x = _feats(1000, 8)
    x[537, 3] = np.inf
    x[900, 0] = np.nan
    np.save(tmp_path / "r.npy", x)
    mm = npyio.load_npy(tmp_path / "r.npy", mmap=True)
    with pytest.raises(InputError, match=r"r\.npy: r1m: expected finite values, found NaN/inf "
                                         r"in row 537 \(of 1000\)"):
      large_descriptors.scan_rows(str(tmp_path / "r.npy"), mm.offset, mm.shape, "r1m",
                                  block_rows=100)

  def test_scan_unit_flag(self, tmp_path):
    x = _feats(300, 8)
    np.save(tmp_path / "r.npy", x)
    mm = npyio.load_npy(tmp_path / "r.npy", mmap=True)
    assert large_descriptors.scan_rows(str(tmp_path / "r.npy"), mm.offset, mm.shape, "r1m",
                                       block_rows=7)
    x[299] *= 2  # the very last row, in the last (partial) block
    np.save(tmp_path / "r.npy", x)
    assert not large_descriptors.scan_rows(str(tmp_path / "r.npy"), mm.offset, mm.shape, "r1m",
                                           block_rows=7)

  def test_load_r1m_checks_every_row_and_keeps_the_memmap(self, tmp_path, monkeypatch, notes):
    monkeypatch.setattr(descriptors, "BLOCK_BYTES", 8 * 8 * 64)  # 64 rows per block
    x = _feats(20000, 8)
    np.save(tmp_path / "r.npy", x)
    mm = large_descriptors.load_r1m(tmp_path / "r.npy", dim=8)
    assert isinstance(mm, np.memmap) and mm.shape == (20000, 8)
    assert "every row checked" in notes.read()
    x[12345, 7] = np.nan  # far from both ends: the old spot check could miss it
    np.save(tmp_path / "r.npy", x)
    with pytest.raises(InputError, match="r1m: expected finite values, found NaN/inf in row 12345"):
      large_descriptors.load_r1m(tmp_path / "r.npy", dim=8)

  def test_load_r1m_non_unit_rows_are_renormalised(self, tmp_path):
    x = _feats(500, 8)
    np.save(tmp_path / "r.npy", x * 3)
    got = large_descriptors.load_r1m(tmp_path / "r.npy")
    assert not isinstance(got, np.memmap)
    np.testing.assert_allclose(got, x, atol=1e-6)

  def test_load_r1m_width_from_the_header(self, tmp_path):
    np.save(tmp_path / "r.npy", _feats(300, 9))
    with pytest.raises(InputError, match=r"r\.npy: r1m: expected descriptor size C=8 .*found "
                                         r"shape \(300, 9\)"):
      large_descriptors.load_r1m(tmp_path / "r.npy", dim=8)
    _dump(tmp_path / "r.pkl", _feats(300, 9))
    with pytest.raises(InputError, match=r"r\.pkl: r1m: expected descriptor size C=8"):
      large_descriptors.load_r1m(tmp_path / "r.pkl", dim=8)


# ----------------------------------------------------------------------------------------------
# Names, boxes and index lists of any shape a file can hold.


class TestStructure:

  @pytest.mark.parametrize("field,value,needle", [
      ("imlist", 40, "imlist: expected a list of names, found an int"),
      ("qimlist", 3, "qimlist: expected a list of names, found an int"),
      ("imlist", "im0", "imlist: expected a list of names, found a str"),
      ("imlist", [["a"]] * 40, "imlist[0]: expected a name (text), found a list"),
      ("imlist", np.array(5), "imlist: expected a flat list of names"),
  ])
  def test_name_lists(self, tmp_path, field, value, needle):
    g = _dump(tmp_path / "g.pkl", dict(_gnd_obj(), **{field: value}))
    with pytest.raises(InputError, match=re.escape(f"g.pkl: {needle}")):
      ground_truth.load_gnd(g)

  @pytest.mark.parametrize("bbx,needle", [
      ("1,2,3,4", "found a str"), ([[1, 2], [3]], "not a flat list of numbers"),
      ([1, 2, 3], "found shape (3,)"), (["a", "b", "c", "d"], "dtype <U1"),
      ([1, 2, float("nan"), 4], "nan"), ({"x": 1}, "found a dict"),
  ])
  def test_bbx(self, tmp_path, bbx, needle):
    obj = _gnd_obj()
    obj["gnd"][2]["bbx"] = bbx
    with pytest.raises(InputError, match=re.escape("gnd[2].bbx: expected a bounding box of 4 "
                                                   "finite numbers")) as e:
      ground_truth.parse_gnd(obj, "g.pkl")
    assert needle in str(e.value)

  def test_bbx_kept_as_float64(self):
    obj = _gnd_obj()
    obj["gnd"][0]["bbx"] = np.array([[1, 2, 3, 4]], np.int32)  # MATLAB-converted (1, 4)
    np.testing.assert_array_equal(ground_truth.parse_gnd(obj, "g")[0]["bbx"], [1.0, 2.0, 3.0, 4.0])

  @pytest.mark.parametrize("value,needle", [
      ("0,1", "a flat list of integer indices, found a str"),
      ([[1], [2, 3]], "a flat list of integer indices, found a list of 2 items"),
      ([1e300], "integer indices, found dtype float64"),
      ({"a": 1}, "found a dict"),
      ([1, None], "integer indices, found dtype object"),
      (np.array([2**63], np.uint64), "indices that fit int64"),
  ])
  def test_index_lists(self, value, needle):
    obj = _gnd_obj()
    obj["gnd"][1]["junk"] = value
    with pytest.raises(InputError, match=re.escape("g: gnd[1].junk: expected ")) as e:
      ground_truth.parse_gnd(obj, "g")
    assert needle in str(e.value)

  def test_cids(self, tmp_path):
    ann = _annotations_obj()
    ann["train"]["cids"] = 7
    with pytest.raises(InputError, match="train.cids: expected a list of names, found an int"):
      annotations.load_annotations(_dump(tmp_path / "a.pkl", ann))
    ann["train"]["cids"] = list(range(30))  # numeric ids are ids too
    assert annotations.load_annotations(_dump(tmp_path / "a.pkl", ann))["train"]["cids"][3] == "3"

  def test_deep_json(self, tmp_path):
    (tmp_path / "d.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="d.json: file: expected a JSON document of reasonable "
                                         "nesting depth"):
      ground_truth.load_gnd(tmp_path / "d.json")


class TestTestFiles:
  """``load_test_files`` (eval --db/--query) makes the cross-checks of ``load_test_set``."""

  def test_same_result_as_one_features_file(self, tmp_path):
    db, q = _feats(40, 8), _feats(3, 8, seed=1)
    g = _dump(tmp_path / "g.pkl", _gnd_obj())
    np.save(tmp_path / "db.npy", db.T)
    np.save(tmp_path / "q.npy", q)
    np.savez(tmp_path / "f.npz", db=db, query=q)
    a = ground_truth.load_test_files(tmp_path / "db.npy", tmp_path / "q.npy", g)
    b = ground_truth.load_test_set(tmp_path / "f.npz", g)
    for x, y in zip(a[:2], b[:2]):
      np.testing.assert_array_equal(x, y)

  def test_cross_checks(self, tmp_path):
    g = _dump(tmp_path / "g.pkl", _gnd_obj(n_db=40, n_q=3))
    no_imlist = _dump(tmp_path / "g2.pkl", {"gnd": _gnd_obj(n_db=40, n_q=3)["gnd"]})
    q = np.save(tmp_path / "q.npy", _feats(3, 8)) or str(tmp_path / "q.npy")
    for name, arr, gnd, needle in (
        ("db41", _feats(41, 8), g, "db41.npy: db: expected 40 descriptors"),
        ("db7", _feats(7, 8), no_imlist, "g2.pkl: gnd[0].hard: expected indices in [0, 7)"),
        ("db_c6", _feats(40, 6), g, "q.npy: query: expected descriptor size C=6")):
      np.save(tmp_path / f"{name}.npy", arr)
      with pytest.raises(InputError, match=re.escape(needle)):
        ground_truth.load_test_files(tmp_path / f"{name}.npy", q, gnd)


def test_the_orientation_is_logged_only_when_the_file_is_transposed(notes):
  x = _feats(20, 6)
  notes.read()
  descriptors.as_descriptors(x, "f.npz", "db", n=20)
  assert "found" not in notes.read()  # the usual (n, C): nothing at INFO, for every file read
  descriptors.as_descriptors(x.T.copy(), "f.npz", "db", n=20)
  assert "f.npz: db: found (C, n) = (6, 20)" in notes.read()
