"""The neighbour cache: equal to brute-force numpy top-k, reused on a hit, recomputed when stale."""

import os

import numpy as np
import pytest

from csa_jax.retrieval import neighbors


def _feats(n, c, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, c))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(feats, m):
  """The definition: descending similarity, ties by lower index, i itself first."""
  s = feats.astype(np.float64) @ feats.astype(np.float64).T
  np.fill_diagonal(s, np.inf)
  return np.argsort(-s, axis=1, kind="stable")[:, :m].astype(np.int32)


# Block 7 does not divide N = 150.
@pytest.mark.parametrize("block", [None, 7])
def test_equals_brute_force(block):
  feats = _feats(150, 12)
  got = neighbors.top_neighbors(feats, 20, block=block, progress=False)
  assert got.dtype == np.int32 and got.shape == (150, 20)
  np.testing.assert_array_equal(got, _brute_force(feats, 20))


def test_exact_duplicates_put_self_first():
  feats = _feats(40, 8)
  feats[[5, 17, 30]] = feats[11]  # four identical images
  got = neighbors.top_neighbors(feats, 6, progress=False)
  np.testing.assert_array_equal(got[:, 0], np.arange(40))
  for i in (5, 11, 17, 30):
    assert set(got[i, :4]) == {5, 11, 17, 30}
    np.testing.assert_array_equal(got[i, 1:4], sorted({5, 11, 17, 30} - {i}))


def test_ensure_self_first():
  nbrs = np.array([[0, 1, 2], [0, 1, 2], [1, 0, 3], [0, 1, 2]])
  np.testing.assert_array_equal(neighbors.ensure_self_first(nbrs),
                                [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 0, 1]])


def test_cache_hit_skips_recomputation(tmp_path, monkeypatch):
  feats = _feats(60, 8)
  nb, hit = neighbors.load_or_compute(feats, 10, 12, cache_dir=tmp_path)
  assert not hit and nb.shape == (60, 12)
  np.testing.assert_array_equal(nb, _brute_force(feats, 12))
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].endswith("_K10_L12.npz")

  def boom(*a, **k):
    raise AssertionError("recomputed on a cache hit")

  monkeypatch.setattr(neighbors, "top_neighbors", boom)
  again, hit = neighbors.load_or_compute(feats.copy(), 10, 12, cache_dir=tmp_path)
  assert hit
  np.testing.assert_array_equal(again, nb)


def count_computations(monkeypatch) -> list:
  """Records every real computation of neighbour lists (not cache hits)."""
  calls, real = [], neighbors.top_neighbors
  monkeypatch.setattr(neighbors, "top_neighbors",
                      lambda *a, **k: calls.append(a[1]) or real(*a, **k))
  return calls


def test_cache_misses_when_key_or_file_changes(tmp_path, monkeypatch):
  feats = _feats(60, 8)
  neighbors.load_or_compute(feats, 10, 12, cache_dir=tmp_path)
  computed = count_computations(monkeypatch)
  # Other K/L: another key.
  _, hit = neighbors.load_or_compute(feats, 12, 10, cache_dir=tmp_path)
  assert not hit and computed == [12]
  # Other content: another key.
  other = feats.copy()
  other[[0, 1]] = other[[1, 0]]
  nb, hit = neighbors.load_or_compute(other, 10, 12, cache_dir=tmp_path)
  assert not hit
  np.testing.assert_array_equal(nb, _brute_force(other, 12))
  # A corrupt cache file: recomputed and rewritten, not trusted.
  path = neighbors.cache_path(tmp_path, neighbors.content_hash(feats), 10, 12)
  with open(path, "r+b") as f:
    f.truncate(100)
  nb, hit = neighbors.load_or_compute(feats, 10, 12, cache_dir=tmp_path)
  assert not hit
  np.testing.assert_array_equal(nb, _brute_force(feats, 12))
  # A well-formed file whose lists are wrong (self not first): recomputed too.
  bad = nb.copy()
  bad[:, [0, 1]] = bad[:, [1, 0]]
  np.savez(path, nbrs=bad, hash=np.array(neighbors.content_hash(feats)), K=np.array(10),
           L=np.array(12), version=np.array(neighbors.CACHE_VERSION))
  nb2, hit = neighbors.load_or_compute(feats, 10, 12, cache_dir=tmp_path)
  assert not hit
  np.testing.assert_array_equal(nb2, nb)
  assert neighbors.load_or_compute(feats, 10, 12, cache_dir=tmp_path)[1]


def test_content_hash_depends_on_values_and_shape_only():
  feats = _feats(30, 8)
  h = neighbors.content_hash(feats)
  assert neighbors.content_hash(np.asfortranarray(feats.astype(np.float64))) == h
  assert neighbors.content_hash(feats.reshape(60, 4)) != h
  feats[3, 2] = np.nextafter(feats[3, 2], np.float32(2))
  assert neighbors.content_hash(feats) != h
