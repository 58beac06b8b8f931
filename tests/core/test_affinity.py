"""Affinity builders equal a plain numpy loop (docs/method.md sections 1-2)."""

import numpy as np
import pytest

from csa_jax import rerank_affinity
from csa_jax import training_affinity


def _unit(rng, n, c):
  x = rng.normal(size=(n, c)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k,l", [(7, 5), (5, 6), (4, 9), (9, 10), (1, 1)])
def test_rerank_affinity_equals_loop(k, l):
  rng = np.random.default_rng(k * 10 + l)
  q, db = _unit(rng, 3, 16), _unit(rng, 40, 16)
  top = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :12]
  got = np.asarray(rerank_affinity(q, db, top, K=k, L=l))
  assert got.shape == (3, k + 1, l)
  for i in range(3):
    tokens = [q[i]] + [db[j] for j in top[i, :k]]
    anchors = [q[i]] + [db[j] for j in top[i, :l - 1]]
    for a, t in enumerate(tokens):
      for b, s in enumerate(anchors):
        assert abs(got[i, a, b] - float(np.dot(t, s))) < 1e-5
  assert np.allclose(got[:, 0, 0], 1.0, atol=1e-5)  # the query against itself


def test_rerank_affinity_size_errors():
  rng = np.random.default_rng(0)
  q, db = _unit(rng, 2, 8), _unit(rng, 20, 8)
  top = np.tile(np.arange(10), (2, 1))
  with pytest.raises(ValueError, match=r"K=11 and L=4 need 11 neighbours.*only 10"):
    rerank_affinity(q, db, top, K=11, L=4)
  with pytest.raises(ValueError, match=r"K=5 and L=12 need 11 neighbours.*only 10"):
    rerank_affinity(q, db, top, K=5, L=12)
  with pytest.raises(ValueError, match="3 queries but 2"):
    rerank_affinity(_unit(rng, 3, 8), db, top, K=5, L=5)


@pytest.mark.parametrize("k,l", [(6, 4), (4, 6), (8, 8)])
def test_training_affinity_equals_loop(k, l):
  rng = np.random.default_rng(k + 100 * l)
  n, m = 30, 10
  feats = _unit(rng, n, 12)
  clusters = rng.integers(0, 4, size=n).astype(np.int32)
  sim = feats @ feats.T
  nbrs = np.argsort(-sim, axis=1, kind="stable")[:, :m].astype(np.int32)
  idx = np.array([3, 0, 29, 3], np.int32)
  aff, tgt = training_affinity(feats, nbrs, clusters, idx, K=k, L=l)
  aff, tgt = np.asarray(aff), np.asarray(tgt)
  assert aff.shape == (4, k, l) and tgt.shape == (4, k)
  for b, i in enumerate(idx):
    for a in range(k):
      for c in range(l):
        assert abs(aff[b, a, c] - float(feats[nbrs[i, a]] @ feats[nbrs[i, c]])) < 1e-5
      want = 1.0 if a == 0 else float(clusters[nbrs[i, a]] == clusters[i])
      assert tgt[b, a] == want


def test_training_target_zero_is_one_even_if_displaced():
  feats = np.eye(4, dtype=np.float32)
  nbrs = np.array([[1, 0], [0, 1], [2, 3], [3, 2]], np.int32)  # image 0's first neighbour is 1
  clusters = np.array([0, 1, 2, 3], np.int32)
  _, tgt = training_affinity(feats, nbrs, clusters, np.array([0], np.int32), K=2, L=2)
  np.testing.assert_array_equal(np.asarray(tgt), [[1.0, 1.0]])


def test_training_affinity_size_errors():
  feats = np.eye(5, dtype=np.float32)
  nbrs = np.tile(np.arange(5, dtype=np.int32), (5, 1))[:, :4]
  cl = np.zeros(5, np.int32)
  idx = np.array([0], np.int32)
  with pytest.raises(ValueError, match=r"K=5 and L=2 need 5 neighbours.*only 4"):
    training_affinity(feats, nbrs, cl, idx, K=5, L=2)
  with pytest.raises(ValueError, match=r"K=2 and L=6 need 6 neighbours.*only 4"):
    training_affinity(feats, nbrs, cl, idx, K=2, L=6)
  with pytest.raises(ValueError, match="one row per image"):
    training_affinity(feats, nbrs[:3], cl, idx, K=2, L=2)
