"""Hostile and broken data files given to ``csa-jax eval`` and ``csa-jax convert-data``.

Every case runs the real CLI in its own process under a 3 GiB address-space limit
(``hostile_cli``): a file that would exhaust memory, crash or end in a traceback fails its case,
not the session. The contract of each bad input: exit code 2, one ``csa-jax <cmd>: error:`` line
naming the file, the field (and the row, for non-finite descriptors), nothing on stdout, and no
file created anywhere under the case's directory (no output, no temporary file).

Float32 rows near 3e38 are not an error: such a row is finite and a legitimate direction whose
norm merely overflows float32, so the readers take norms in float64 and normalise it correctly
(``test_float32_rows_near_3e38_normalise_correctly``). A float64 value beyond the float32 range
is refused: it would become inf once cast.

Arrays are tiny (C=8, 40 db images); the crafted headers claim hundreds of GiB without holding
them. The ``*_bytes`` helpers (``npy_craft``) write .npy / .zip structures by hand, as an
attacker would.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from hostile_cli import expect_input_error, expect_ok, leftover_temp_files, run_cli
from npy_craft import deflate_bomb, npy_bytes, npz_member, zip_bytes

# Each case boots csa-jax in a subprocess: the slow tier (see tests/conftest.py).
pytestmark = pytest.mark.slow

C, NQ, NDB = 8, 3, 40
R1M_ROWS = 30000  # a memory-mapped R1M of 0.9 MB: rows far from both ends exist
BIG_SHAPE = (100_000, 1_000_000)  # float32: 372.5 GiB claimed by a header of a few bytes


# ----------------------------------------------------------------------------------------------
# Valid files to start from, and the commands.


def unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def feats(n, c=C, seed=0):
  return unit(np.random.default_rng(seed).normal(size=(n, c)))


def gnd_doc(n_db=NDB, n_q=NQ, **entry):
  return {"imlist": [f"im{i}" for i in range(n_db)], "qimlist": [f"q{i}" for i in range(n_q)],
          "gnd": [{"bbx": [0, 0, 5, 5], "easy": [q], "hard": [10 + q], "junk": [20 + q],
                   **entry} for q in range(n_q)]}


def write_json(path, obj) -> str:
  path.write_text(json.dumps(obj))
  return str(path)


def write_test_set(d, db=None, query=None, gnd=None):
  """feats.npz ('db', 'query') and gnd_toy.json in ``d``; defaults are valid."""
  np.savez(d / "feats.npz", db=feats(NDB) if db is None else db,
           query=feats(NQ, seed=1) if query is None else query)
  return str(d / "feats.npz"), write_json(d / "gnd_toy.json", gnd or gnd_doc())


def eval_features(d, f, g, *extra):
  return ["eval", "--features", f, "--gnd", g, "--out", d / "res.json", *extra]


def eval_files(d, db, q, g, *extra):
  return ["eval", "--db", db, "--query", q, "--gnd", g, "--out", d / "res.json", *extra]


def save(d, name, arr) -> str:
  np.save(d / name, arr)
  return str(d / name)


def write_bytes(d, name, data: bytes) -> str:
  (d / name).write_bytes(data)
  return str(d / name)


# ----------------------------------------------------------------------------------------------
# The cases: each writes its files into d and returns (CLI args, substrings of the error line).

CASES = {}


def case(fn):
  CASES[fn.__name__] = fn
  return fn


@case
def float64_1e300_row(d):
  db = feats(NDB).astype(np.float64)
  db[17] *= 1e300  # finite in float64, inf as float32
  f, g = write_test_set(d, db=db)
  return eval_features(d, f, g), ["feats.npz: db: expected finite values", "row 17",
                                  "beyond the float32 range"]


@case
def nan_db_row(d):
  db = feats(NDB)
  db[5, 2] = np.nan
  f, g = write_test_set(d, db=db)
  return eval_features(d, f, g), ["feats.npz: db: expected finite values", "row 5", "NaN"]


@case
def inf_query_row_two_files(d):
  q = feats(NQ, seed=1)
  q[1, 0] = np.inf
  _, g = write_test_set(d)
  args = eval_files(d, save(d, "db.npy", feats(NDB)), save(d, "q.npy", q), g)
  return args, ["q.npy: query: expected finite values", "row 1", "inf"]


def r1m_deep_row(n=R1M_ROWS):
  """A row the old spot check (first / last 4096 rows and 4096 random ones) never read."""
  rng = np.random.default_rng(0)
  seen = set(range(4096)) | set(range(n - 4096, n)) | set(rng.integers(0, n, 4096).tolist())
  return next(r for r in range(n // 2, n) if r not in seen)


@case
def nan_r1m_row_deep_in_memmap(d):
  f, g = write_test_set(d)
  r1m = feats(R1M_ROWS, seed=3)
  row = r1m_deep_row()
  r1m[row, 4] = np.nan
  return eval_features(d, f, g, "--r1m", save(d, "r1m.npy", r1m)), [
      "r1m.npy: r1m: expected finite values", f"row {row} "]


@case
def npz_header_claims_373gib(d):
  # A member holding only a header that claims 372.5 GiB: the whole file is under 1 KB.
  bomb = zip_bytes([npz_member("db.npy", npy_bytes(BIG_SHAPE)),
                    npz_member("query.npy", npy_bytes((NQ, C)))])
  assert len(bomb) < 1024
  _, g = write_test_set(d)
  f = write_bytes(d, "bomb.npz", bomb)
  return eval_features(d, f, g), ["bomb.npz: db: expected", "372.5 GiB",
                                  "the member's declared size"]


@case
def npz_zip_size_lies(d):
  # The zip entry declares 3.9 GiB (as does the .npy header) for a few stored bytes.
  head = npy_bytes(((3_900 << 20) // 4 // C, C))
  size = len(head) + (3_900 << 20)
  bomb = zip_bytes([npz_member("db.npy", head, method=8, size=size)])
  _, g = write_test_set(d)
  f = write_bytes(d, "lies.npz", bomb)
  return eval_features(d, f, g), ["lies.npz: db: expected a declared size",
                                  "a zip bomb or a lying header"]


@case
def npz_zip_bomb(d):
  # An honest zip bomb: 3.5 GiB of zeros deflated into 3.6 MB, sizes and header all consistent.
  mib = 3584
  head = npy_bytes(((mib << 20) // 4 // C, C))
  stream = deflate_bomb(head, mib)
  bomb = zip_bytes([("db.npy", stream, 8, 0, len(head) + (mib << 20)),
                    npz_member("query.npy", npy_bytes((NQ, C), data=feats(NQ).tobytes()))])
  _, g = write_test_set(d)
  f = write_bytes(d, "zbomb.npz", bomb)
  return eval_features(d, f, g), ["zbomb.npz: db: expected an array that fits in", "3.5 GiB"]


@case
def npy_header_claims_373gib(d):
  _, g = write_test_set(d)
  db = write_bytes(d, "db.npy", npy_bytes(BIG_SHAPE))
  return eval_files(d, db, save(d, "q.npy", feats(NQ)), g), [
      "db.npy: file: expected a complete .npy file: 372.5 GiB", "found 0 bytes in the file"]


@case
def npy_negative_dimension(d):
  _, g = write_test_set(d)
  db = write_bytes(d, "db.npy", npy_bytes((-5, C), data=bytes(64)))
  return eval_files(d, db, save(d, "q.npy", feats(NQ)), g), [
      "db.npy: file: expected non-negative dimensions", "(-5, 8)"]


@case
def npy_header_length_4gib(d):
  # Version 2.0 headers have a 32-bit length: numpy would allocate it before reading.
  _, g = write_test_set(d)
  db = write_bytes(d, "db.npy", npy_bytes((NDB, C), version=(2, 0), header_len=0xFFFFFFF0))
  return eval_files(d, db, save(d, "q.npy", feats(NQ)), g), [
      "db.npy: file: expected a .npy header of at most", "4294967280 bytes claimed"]


@case
def npy_object_dtype(d):
  _, g = write_test_set(d)
  obj = np.empty((NDB, C), object)
  obj[:] = 1.0
  np.save(d / "db.npy", obj, allow_pickle=True)
  return eval_files(d, d / "db.npy", save(d, "q.npy", feats(NQ)), g), [
      "db.npy: file: expected numeric arrays", "object array"]


@case
def npy_truncated(d):
  _, g = write_test_set(d)
  np.save(d / "full.npy", feats(NDB))
  data = (d / "full.npy").read_bytes()
  os.remove(d / "full.npy")
  db = write_bytes(d, "db.npy", data[:len(data) - 100])
  return eval_files(d, db, save(d, "q.npy", feats(NQ)), g), [
      "db.npy: file: expected a complete .npy file", "truncated"]


@case
def bbx_strings(d):
  f, g = write_test_set(d, gnd=gnd_doc(bbx="1,2,3,4"))
  return eval_features(d, f, g), ["gnd_toy.json: gnd[0].bbx: expected a bounding box"]


@case
def bbx_ragged(d):
  doc = gnd_doc()
  doc["gnd"][1]["bbx"] = [[1, 2], [3]]
  f, g = write_test_set(d, gnd=doc)
  return eval_features(d, f, g), ["gnd_toy.json: gnd[1].bbx: expected a bounding box"]


@case
def imlist_int(d):
  f, g = write_test_set(d, gnd=dict(gnd_doc(), imlist=NDB))
  return eval_features(d, f, g), ["gnd_toy.json: imlist: expected a list of names", "found an int"]


@case
def qimlist_int(d):
  f, g = write_test_set(d, gnd=dict(gnd_doc(), qimlist=NQ))
  return eval_features(d, f, g), ["gnd_toy.json: qimlist: expected a list of names"]


@case
def cids_int_in_annotations(d):
  ann = {"train": {"cids": 7, "cluster": [0, 0, 1, 1]}}
  a = write_json(d / "ann.json", ann)
  return ["convert-data", a, "--out", d / "ann_out.json"], [
      "ann.json: train.cids: expected a list of names"]


@case
def cids_int_via_annotations_flag(d):
  # Training features cross-checked against annotations whose cids is not a list.
  a = write_json(d / "ann.json", {"train": {"cids": 4, "cluster": [0, 0, 1, 1]}})
  (d / "train.pkl").write_bytes(pickle.dumps({"train": feats(4)}))
  return ["convert-data", d / "train.pkl", "--annotations", a, "--out", d / "t.npz"], [
      "ann.json: train.cids: expected a list of names"]


@case
def json_100k_deep(d):
  f, _ = write_test_set(d)
  (d / "gnd_deep.json").write_text("[" * 100_000 + "]" * 100_000)
  return eval_features(d, f, d / "gnd_deep.json"), [
      "gnd_deep.json: file: expected a JSON document of reasonable nesting depth"]


@case
def json_100k_deep_convert(d):
  (d / "ann.json").write_text('{"train": ' + "[" * 100_000 + "]" * 100_000 + "}")
  return ["convert-data", d / "ann.json", "--out", d / "x.json"], [
      "ann.json: file: expected a JSON document of reasonable nesting depth"]


@case
def gnd_entry_not_a_dict(d):
  doc = gnd_doc()
  doc["gnd"][1] = [[1], [2], [3]]
  f, g = write_test_set(d, gnd=doc)
  return eval_features(d, f, g), ["gnd_toy.json: gnd[1]: expected a dict"]


@case
def gnd_easy_string(d):
  f, g = write_test_set(d, gnd=gnd_doc(easy="0,1"))
  return eval_features(d, f, g), ["gnd_toy.json: gnd[0].easy: expected a flat list"]


@case
def gnd_hard_nested(d):
  f, g = write_test_set(d, gnd=gnd_doc(hard=[[10], [11, 12]]))
  return eval_features(d, f, g), ["gnd_toy.json: gnd[0].hard: expected a flat list"]


@case
def gnd_junk_huge_float(d):
  f, g = write_test_set(d, gnd=gnd_doc(junk=[1e300]))
  return eval_features(d, f, g), ["gnd_toy.json: gnd[0].junk: expected integer indices"]


@case
def features_db_is_a_dict(d):
  _, g = write_test_set(d)
  (d / "feats.pkl").write_bytes(pickle.dumps({"db": {"a": 1}, "query": feats(NQ)}))
  return eval_features(d, d / "feats.pkl", g), [
      "feats.pkl: db: expected a 2-D array of descriptors", "found a dict"]


@case
def db_file_count_vs_imlist(d):
  _, g = write_test_set(d)
  args = eval_files(d, save(d, "db.npy", feats(NDB + 1)), save(d, "q.npy", feats(NQ)), g)
  return args, ["db.npy: db: expected 40 descriptors", "found shape (41, 8)"]


@case
def query_file_width_vs_db(d):
  _, g = write_test_set(d)
  args = eval_files(d, save(d, "db.npy", feats(NDB)), save(d, "q.npy", feats(NQ, C + 2)), g)
  return args, ["q.npy: query: expected descriptor size C=8"]


@case
def out_parent_is_a_file(d):
  f, g = write_test_set(d)
  (d / "afile").write_text("x")
  return ["eval", "--features", f, "--gnd", g, "--out", d / "afile" / "res.json"], [
      "res.json: --out: expected a path whose parent is a directory", "afile is a file"]


@case
def out_is_a_directory(d):
  f, g = write_test_set(d)
  (d / "outdir").mkdir()
  return ["eval", "--features", f, "--gnd", g, "--out", d / "outdir"], [
      "outdir: --out: expected a file path", "found a directory"]


@case
def default_out_is_a_directory(d):
  f, g = write_test_set(d)
  (d / "eval_toy.json").mkdir()  # where the results would go without --out
  return ["eval", "--features", f, "--gnd", g], [
      "eval_toy.json: --out: expected a file path", "found a directory"]


@case
def r1m_width_mismatch(d):
  f, g = write_test_set(d)
  return eval_features(d, f, g, "--r1m", save(d, "r1m.npy", feats(60, C + 1))), [
      "r1m.npy: r1m: expected descriptor size C=8", "shape (60, 9)"]


@case
def convert_out_parent_is_a_file(d):
  (d / "afile").write_text("x")
  src = save(d, "x.npy", feats(NDB))
  return ["convert-data", src, "--out", d / "afile" / "y.npy"], [
      "y.npy: --out: expected a path whose parent is a directory"]


@case
def convert_float64_1e300_row(d):
  x = feats(NDB).astype(np.float64)
  x[33] *= 1e300
  (d / "r1m.pkl").write_bytes(pickle.dumps(x))
  return ["convert-data", d / "r1m.pkl", "--out", d / "r1m.npy"], [
      "r1m.pkl: descriptors: expected finite values", "row 33"]


def _tree(d):
  return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_one_line_exit_2_and_writes_nothing(tmp_path, name):
  args, needles = CASES[name](tmp_path)
  before = _tree(tmp_path)
  res = run_cli(args, tmp_path)
  expect_input_error(res, *needles)
  assert res.stdout == "", res
  assert _tree(tmp_path) == before  # no output, no temporary file, no directory
  assert leftover_temp_files(tmp_path) == []


def test_enough_cases():
  assert len(CASES) >= 22


# ----------------------------------------------------------------------------------------------
# Rows near the float32 maximum: finite, so normalised (in float64), never zeroed.


def huge_rows(n, seed=0):
  """Rows whose largest value is 3e38: their float32 norm would overflow to inf."""
  x = feats(n, seed=seed).astype(np.float64)
  return (x * (3e38 / np.abs(x).max(axis=1, keepdims=True))).astype(np.float32)


def test_float32_rows_near_3e38_normalise_correctly(tmp_path):
  x = huge_rows(50)
  with np.errstate(over="ignore"):
    assert np.isinf(np.linalg.norm(x, axis=1)).all() and np.isfinite(x).all()
  src = save(tmp_path, "huge.npy", x)
  res = run_cli(["convert-data", src, "--out", tmp_path / "out.npy"], tmp_path)
  expect_ok(res)
  got = np.load(tmp_path / "out.npy")
  want = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)


def test_eval_db_rows_near_3e38_rank_as_their_directions(tmp_path):
  db = feats(NDB)
  f, g = write_test_set(tmp_path, db=db)
  np.savez(tmp_path / "huge.npz", db=huge_rows(NDB), query=feats(NQ, seed=1))
  # huge_rows(NDB) has the directions of feats(NDB): the same ranking, the same mAP.
  for feats_file, out in ((f, "unit.json"), (tmp_path / "huge.npz", "huge.json")):
    expect_ok(run_cli(["eval", "--features", feats_file, "--gnd", g, "--out", tmp_path / out],
                      tmp_path))
  unit_js = json.loads((tmp_path / "unit.json").read_text())
  huge_js = json.loads((tmp_path / "huge.json").read_text())
  assert huge_js["first_round"] == unit_js["first_round"]
  assert unit_js["first_round"]["easy"]["map"] > 0
