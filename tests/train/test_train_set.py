"""The input pipeline: index batches deterministic in (seed, epoch), per-process slices, and
stacked descriptor sets whose neighbour lists stay inside their own set."""

import json

import jax
import numpy as np
import pytest

from csa_jax import parallel
from csa_jax.core import affinity
from csa_jax.errors import InputError
from csa_jax.retrieval import neighbors
from csa_jax.train import train_set as pipeline


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
  a = pipeline.epoch_order(1000, seed=3, epoch=2)
  assert a.dtype == np.int32
  np.testing.assert_array_equal(np.sort(a), np.arange(1000))
  np.testing.assert_array_equal(a, pipeline.epoch_order(1000, seed=3, epoch=2))
  assert not np.array_equal(a, pipeline.epoch_order(1000, seed=3, epoch=3))
  assert not np.array_equal(a, pipeline.epoch_order(1000, seed=4, epoch=2))


def test_steps_drop_the_remainder():
  assert pipeline.steps_per_epoch(1000, 64) == 15
  assert pipeline.steps_per_epoch(1024, 64) == 16
  assert pipeline.steps_per_epoch(10, 64) == 0


@pytest.mark.parametrize("procs", [1, 2, 4])
def test_process_slices_tile_the_global_batch(procs):
  order = pipeline.epoch_order(100, 0, 0)
  gb = 24
  seen = []
  for step in range(pipeline.steps_per_epoch(100, gb)):
    parts = [pipeline.batch_indices(order, step, gb, p, procs) for p in range(procs)]
    assert all(p.shape == (gb // procs,) and p.dtype == np.int32 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), order[step * gb:(step + 1) * gb])
    seen.extend(np.concatenate(parts))
  assert len(set(seen)) == len(seen) == 96  # every sample at most once, remainder dropped


def test_batch_index_errors():
  order = np.arange(50)
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.batch_indices(order, 0, 10, 0, 3)
  with pytest.raises(ValueError, match="step 5"):
    pipeline.batch_indices(order, 5, 10)
  with pytest.raises(ValueError, match="process_index"):
    pipeline.batch_indices(order, 0, 10, 2, 2)


def _write_sets(tmp_path, n=40, c=8):
  rng = np.random.default_rng(0)
  clusters = (np.arange(n) // 5).tolist()
  ann = {"train": {"cids": [str(i) for i in range(n)], "cluster": clusters},
         "val": {"cluster": [0, 0, 1]}}
  (tmp_path / "ann.json").write_text(json.dumps(ann))
  sets = [_unit(rng.normal(size=(n, c))) for _ in range(2)]
  np.savez(tmp_path / "a.npz", train=sets[0], val=_unit(rng.normal(size=(3, c))))
  np.save(tmp_path / "b.npy", sets[1].T)  # one set as a bare (C, n) array
  return sets, np.array(clusters)


def _brute_force(feats, m):
  s = feats.astype(np.float64) @ feats.T.astype(np.float64)
  np.fill_diagonal(s, np.inf)
  return np.argsort(-s, axis=1, kind="stable")[:, :m]


def test_stacked_sets(tmp_path, monkeypatch):
  sets, clusters = _write_sets(tmp_path)
  ts = pipeline.load_train_set([str(tmp_path / "a.npz"), str(tmp_path / "b.npy")],
                               str(tmp_path / "ann.json"), K=6, L=9, cache_dir=tmp_path / "c")
  assert ts.num_samples == 80 and ts.sets == [("a", 0, 40), ("b", 40, 80)]
  assert ts.feats_NxC.dtype == np.float32 and ts.nbrs_NxM.dtype == np.int32
  assert ts.clusters_N.dtype == np.int32 and ts.nbrs_NxM.shape == (80, 9)
  np.testing.assert_array_equal(ts.feats_NxC, np.concatenate(sets))
  np.testing.assert_array_equal(ts.clusters_N, np.tile(clusters, 2))
  np.testing.assert_array_equal(ts.nbrs_NxM[:40], _brute_force(sets[0], 9))
  np.testing.assert_array_equal(ts.nbrs_NxM[40:], 40 + _brute_force(sets[1], 9))
  # The second load reuses both sets' caches.
  def recompute(*a, **k):
    raise AssertionError("recomputed on a cache hit")

  monkeypatch.setattr(neighbors, "top_neighbors", recompute)
  again = pipeline.load_train_set([str(tmp_path / "a.npz"), str(tmp_path / "b.npy")],
                                  str(tmp_path / "ann.json"), K=6, L=9, cache_dir=tmp_path / "c")
  np.testing.assert_array_equal(again.nbrs_NxM, ts.nbrs_NxM)


def test_device_arrays_feed_training_affinity(tmp_path):
  _write_sets(tmp_path)
  ts = pipeline.load_train_set([str(tmp_path / "a.npz"), str(tmp_path / "b.npy")],
                               str(tmp_path / "ann.json"), K=6, L=9)
  mesh = parallel.make_mesh()
  feats, nbrs, clusters = parallel.put_replicated((ts.feats_NxC, ts.nbrs_NxM, ts.clusters_N), mesh)
  assert feats.sharding.is_fully_replicated and len(feats.sharding.device_set) == len(jax.devices())
  order = pipeline.epoch_order(ts.num_samples, seed=0, epoch=0)
  idx = pipeline.batch_indices(order, 1, 8)
  aff, targets = affinity.training_affinity(feats, nbrs, clusters, idx, 6, 9)
  for b, i in enumerate(idx):  # the per-sample definition of docs/method.md section 2, in numpy
    tok, anc = ts.nbrs_NxM[i, :6], ts.nbrs_NxM[i, :9]
    np.testing.assert_allclose(aff[b], ts.feats_NxC[tok] @ ts.feats_NxC[anc].T, atol=1e-6)
    np.testing.assert_array_equal(targets[b], ts.clusters_N[tok] == ts.clusters_N[i])


def test_random_train_set_is_seeded_with_exact_neighbour_lists():
  ts = pipeline.random_train_set(50, 4, 6, 7, seed=3)
  assert ts.num_samples == 50 and ts.sets == [("random", 0, 50)]
  assert ts.feats_NxC.dtype == np.float32 and ts.feats_NxC.shape == (50, 6)
  np.testing.assert_allclose(np.linalg.norm(ts.feats_NxC, axis=1), 1.0, rtol=1e-6)
  assert ts.clusters_N.dtype == np.int32 and set(ts.clusters_N) <= set(range(4))
  # The lists neighbors.top_neighbors would compute: self first, then by similarity.
  np.testing.assert_array_equal(ts.nbrs_NxM, neighbors.top_neighbors(ts.feats_NxC, 7,
                                                                     progress=False))
  again = pipeline.random_train_set(50, 4, 6, 7, seed=3)
  np.testing.assert_array_equal(again.feats_NxC, ts.feats_NxC)
  assert not np.array_equal(pipeline.random_train_set(50, 4, 6, 7, seed=4).feats_NxC,
                            ts.feats_NxC)


def test_load_errors(tmp_path):
  _write_sets(tmp_path)
  np.save(tmp_path / "short.npy", _unit(np.ones((39, 8))))
  with pytest.raises(InputError, match="short.npy: train: expected 40 descriptors"):
    pipeline.load_train_set([str(tmp_path / "short.npy")], str(tmp_path / "ann.json"), 6, 9)
  np.save(tmp_path / "wide.npy", _unit(np.random.default_rng(1).normal(size=(40, 6))))
  with pytest.raises(InputError, match="wide.npy: train: expected descriptor size C=8"):
    pipeline.load_train_set([str(tmp_path / "a.npz"), str(tmp_path / "wide.npy")],
                            str(tmp_path / "ann.json"), 6, 9)
  with pytest.raises(InputError, match=r"max\(K, L\) = 50"):
    pipeline.load_train_set([str(tmp_path / "a.npz")], str(tmp_path / "ann.json"), 50, 9)
  with pytest.raises(InputError, match="'test' split"):
    pipeline.load_train_set([str(tmp_path / "a.npz")], str(tmp_path / "ann.json"), 6, 9,
                            split="test")
