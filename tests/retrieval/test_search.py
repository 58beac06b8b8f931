"""top_k_search against numpy's stable argsort, on 1 and 8 fake devices, array and memmap.

Both implementations run on CPU: "jax" (what accelerators use) and "host" (BLAS + numpy, the
CPU default).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csa_jax import parallel
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
