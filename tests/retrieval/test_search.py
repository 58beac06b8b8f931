"""top_k_search against numpy's stable argsort, on 1 and 8 fake devices, array and memmap.

Both implementations run on CPU: "jax" (what accelerators use) and "host" (BLAS + numpy, the
CPU default).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csa_jax import parallel
from csa_jax.data import large_descriptors
from csa_jax.errors import InputError
from csa_jax.evaluation import evaluate, revisited
from csa_jax.retrieval import search

N, C, Q = 240, 8, 5


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  # Small integers: every dot product is exact in float32 (and bfloat16 inputs), with many ties.
  db = rng.integers(-1, 2, (N, C)).astype(np.float32)
  q = rng.integers(-1, 2, (Q, C)).astype(np.float32)
  return q, db, q @ db.T


def reference(scores_QxN, t):
  idx = np.argsort(-scores_QxN, axis=1, kind="stable")[:, :t]
  return np.take_along_axis(scores_QxN, idx, 1), idx


@pytest.mark.parametrize("impl", ["jax", "host"])
@pytest.mark.parametrize("n_dev", [1, 8])
@pytest.mark.parametrize("source", ["numpy", "memmap", "jax"])
@pytest.mark.parametrize("block,t", [(48, 17), (56, 1), (50, N), (1000, 30)])
def test_equals_stable_argsort(data, tmp_path, impl, n_dev, source, block, t):
  q, db, s = data
  if source == "memmap":
    np.save(tmp_path / "db.npy", db)
    db = np.load(tmp_path / "db.npy", mmap_mode="r")
  elif source == "jax":
    db = jnp.asarray(db)
  want_v, want_i = reference(s, t)
  got_v, got_i = search.top_k_search(q, db, t, block=block, devices=jax.devices()[:n_dev],
                                     impl=impl)
  np.testing.assert_array_equal(got_i, want_i)
  np.testing.assert_array_equal(got_v, want_v)
  assert got_v.dtype == np.float32 and got_i.dtype == np.int32


@pytest.mark.parametrize("n_dev", [1, 8])
@pytest.mark.parametrize("block,t", [(32, 40), (100, 7), (4096, 64)])
def test_host_equals_jax_with_scores(n_dev, block, t):
  # Tie-heavy data over several blocks: both paths give the same lists and the same scores_out.
  rng = np.random.default_rng(block + t)
  db = rng.integers(-1, 2, (1500, 16)).astype(np.float32)
  q = rng.integers(-1, 2, (7, 16)).astype(np.float32)
  out = {}
  for impl in ("jax", "host"):
    out[impl] = np.full((7, 1500), np.nan, np.float32)
    out[impl, "top"] = search.top_k_search(q, db, t, block=block, devices=jax.devices()[:n_dev],
                                           scores_out=out[impl], impl=impl)
  np.testing.assert_array_equal(out["host"], out["jax"])
  np.testing.assert_array_equal(out["host"], q @ db.T)
  for a, b in zip(out["host", "top"], out["jax", "top"]):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(out["host", "top"][1], reference(q @ db.T, t)[1])


def test_auto_takes_host_path_for_float32_on_cpu(data, monkeypatch):
  calls = []
  real = search.host_search.host_top_k
  monkeypatch.setattr(search.host_search, "host_top_k",
                      lambda *a, **k: calls.append(1) or real(*a, **k))
  q, db, _ = data
  search.top_k_search(q, db, 5, devices=jax.devices()[:8])
  assert calls == [1]
  search.top_k_search(q, db, 5, dtype="bfloat16")
  search.top_k_search(q, db, 5, impl="jax")
  assert calls == [1]
  with pytest.raises(ValueError, match="impl"):
    search.top_k_search(q, db, 5, dtype="bfloat16", impl="host")
  with pytest.raises(ValueError, match="impl"):
    search.top_k_search(q, db, 5, impl="numpy")


@pytest.mark.parametrize("n_dev", [1, 8])
@pytest.mark.parametrize("block,t", [(48, 3), (56, 40)])
def test_few_candidates_path(data, monkeypatch, n_dev, block, t):
  # Blocks larger than 2 * CANDIDATES take a small top_k once the running list is full; with
  # CANDIDATES = 2 both that path and the full fallback (more than 2 above) run here.
  q, db, s = data
  monkeypatch.setattr(search, "CANDIDATES", 2)
  got_v, got_i = search.top_k_search(q, db, t, block=block, devices=jax.devices()[:n_dev],
                                     impl="jax")
  want_v, want_i = reference(s, t)
  np.testing.assert_array_equal(got_i, want_i)
  np.testing.assert_array_equal(got_v, want_v)


@pytest.mark.parametrize("n_dev", [1, 8])
def test_all_scores_and_bfloat16(data, n_dev):
  q, db, s = data
  out = np.full((Q, N), np.nan, np.float32)
  _, i = search.top_k_search(q, db, 10, block=64, dtype="bfloat16", scores_out=out,
                             devices=jax.devices()[:n_dev])
  np.testing.assert_array_equal(out, s)  # small integers: bfloat16 inputs are exact
  np.testing.assert_array_equal(i, reference(s, 10)[1])


@pytest.mark.parametrize("impl", ["jax", "host"])
def test_real_valued_order_and_bad_args(data, impl):
  rng = np.random.default_rng(1)
  db = rng.standard_normal((300, 16)).astype(np.float32)
  q = rng.standard_normal((3, 16)).astype(np.float32)
  out = np.zeros((3, 300), np.float32)
  v, i = search.top_k_search(q, db, 20, block=64, scores_out=out, impl=impl)
  np.testing.assert_array_equal(i, reference(out, 20)[1])  # the order of its own scores
  np.testing.assert_array_equal(v, reference(out, 20)[0])
  np.testing.assert_allclose(out, q @ db.T, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="T="):
    search.top_k_search(q, db, 301)
  with pytest.raises(ValueError, match="width"):
    search.top_k_search(q[:, :8], db, 5)
  with pytest.raises(ValueError, match="dtype"):
    search.top_k_search(q, db, 5, dtype="float16")


def test_sharded_step_is_local():
  # Each device merges its own shard of the block: no device gathers another's scores.
  devices = jax.devices()[:8]
  mesh = parallel.make_mesh(devices)
  shard = parallel.batch_sharding(mesh)
  args = [jax.ShapeDtypeStruct((8, 5, 10), jnp.float32, sharding=shard),
          jax.ShapeDtypeStruct((8, 5, 10), jnp.int32, sharding=shard),
          jnp.zeros((5, 16)), jax.ShapeDtypeStruct((8, 32, 16), jnp.float32, sharding=shard),
          np.int32(0), np.int32(200)]
  hlo = search._step_fn(mesh, "float32", True, 4).lower(*args).compile().as_text()
  assert not any(op in hlo for op in ("all-gather", "all-reduce", "all-to-all"))


@pytest.mark.parametrize("impl", ["jax", "host"])
@pytest.mark.parametrize("n_dev", [1, 8])
def test_stacked_parts(data, tmp_path, n_dev, impl):
  # A test set's db followed by distractors from a memmap, searched as one database.
  q, db, s = data
  np.save(tmp_path / "r1m.npy", db[100:])
  stacked = search.StackedRows([db[:100], np.load(tmp_path / "r1m.npy", mmap_mode="r")])
  out = np.zeros((Q, N), np.float32)
  got_v, got_i = search.top_k_search(q, stacked, 30, block=64, scores_out=out,
                                     devices=jax.devices()[:n_dev], impl=impl)
  want_v, want_i = reference(s, 30)
  np.testing.assert_array_equal(got_i, want_i)
  np.testing.assert_array_equal(got_v, want_v)
  np.testing.assert_array_equal(out, s)
  np.testing.assert_array_equal(stacked[np.array([150, 3, 99, 100])], db[[150, 3, 99, 100]])


def _deferred(tmp_path, x, name="r1m.npy"):
  np.save(tmp_path / name, x)
  return large_descriptors.load_r1m(tmp_path / name, defer=True)


@pytest.mark.parametrize("impl", ["jax", "host"])
def test_deferred_rows_are_checked_as_searched(tmp_path, monkeypatch, impl):
  # A unit-norm file: searched as its memmap, every row checked in that pass, never re-scanned.
  rng = np.random.default_rng(4)
  x = rng.standard_normal((700, 16)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  q = x[[3, 500]] + 0.1
  d = _deferred(tmp_path, x)
  assert isinstance(d, large_descriptors.DeferredRows) and d.shape == (700, 16) and len(d) == 700
  scans = []
  monkeypatch.setattr(large_descriptors, "scan_rows", lambda *a, **k: scans.append(a) or True)
  out = np.zeros((2, 700), np.float32)
  got_v, got_i = search.top_k_search(q, d, 25, block=64, scores_out=out, impl=impl)
  want_v, want_i = reference(out, 25)
  np.testing.assert_array_equal(got_i, want_i)
  np.testing.assert_array_equal(got_v, want_v)
  np.testing.assert_allclose(out, q @ x.T, rtol=1e-5, atol=1e-6)
  assert isinstance(d.rows(), np.memmap) and scans == []  # the search's pass was the check
  np.testing.assert_array_equal(d[np.array([699, 0])], x[[699, 0]])
  stacked = search.StackedRows([x[:10], d])
  np.testing.assert_array_equal(search.top_k_search(q, stacked, 25, block=64, impl=impl)[1],
                                reference(q @ np.concatenate([x[:10], x]).T, 25)[1])


def test_deferred_rows_read_by_index_first_are_scanned_first(tmp_path):
  x = np.eye(40, 8, dtype=np.float32)
  x[8:] = x[:8].repeat(4, axis=0)
  d = _deferred(tmp_path, x)
  x[33] = 0
  np.save(tmp_path / "r1m.npy", x)  # the file changed before anything read it
  with pytest.raises(InputError, match=r"r1m: expected non-zero descriptors, found an all-zero "
                                       r"row 33 \(of 40\)"):
    d[np.array([1])]


@pytest.mark.parametrize("impl", ["jax", "host"])
def test_deferred_rows_off_unit_norm_are_renormalised(tmp_path, caplog, impl):
  rng = np.random.default_rng(8)
  x = rng.standard_normal((500, 16)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y = x.copy()
  y[321] *= 1.01  # off by 1%: re-normalised, as load_r1m does without defer
  q = x[[4, 9, 321]]
  d = _deferred(tmp_path, y)
  out = np.zeros((3, 500), np.float32)
  got_v, got_i = search.top_k_search(q, d, 30, block=32, scores_out=out, impl=impl)
  want = large_descriptors.load_r1m(tmp_path / "r1m.npy")  # the eager reader's re-normalised copy
  assert type(d.rows()) is np.ndarray
  np.testing.assert_array_equal(d.rows(), want)
  np.testing.assert_allclose(out, q @ want.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got_i, reference(out, 30)[1])
  assert any("not L2-normalised" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
@pytest.mark.parametrize("with_top", [False, True])
def test_evaluation_in_threads_equals_one_call(workers, with_top):
  # evaluate scores the search's output with its queries shared out to threads: the numbers must
  # be those of one call, to the last bit (means over all queries, empty queries left out).
  rng = np.random.default_rng(workers)
  s = rng.integers(-3, 4, (7, 400)).astype(np.float32)  # many ties
  gnd = [{"easy": rng.choice(400, 5, replace=False), "hard": rng.choice(400, 3, replace=False),
          "junk": rng.choice(400, 4, replace=False)} for _ in range(7)]
  gnd[2] = {"easy": [], "hard": [], "junk": [1]}  # no positives: NaN, out of the means
  gnd[5]["easy"] = []
  top = np.argsort(-s, axis=1, kind="stable")[:, :20][:, ::-1].copy() if with_top else None
  want = revisited.revisited_map_from_scores(s, gnd, top_QxK=top)
  got = evaluate.results_from_scores(s, gnd, top_QxK=top, workers=workers)
  for p in revisited.PROTOCOLS:
    assert got[p]["map"] == want[p]["map"]
    np.testing.assert_array_equal(got[p]["mp"], want[p]["mp"])
    np.testing.assert_array_equal(got[p]["aps"], want[p]["aps"])
    np.testing.assert_array_equal(got[p]["prs"], want[p]["prs"])
  bad = [dict(g) for g in gnd]
  bad[6] = {"easy": [400], "hard": [], "junk": []}
  with pytest.raises(ValueError, match=r"gnd\[6\]: expected db indices in \[0, 400\)"):
    evaluate.results_from_scores(s, bad, workers=workers)
