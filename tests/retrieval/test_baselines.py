"""AQE, alpha-QE and alpha-DBA against straightforward numpy implementations."""

import numpy as np
import pytest

from csa_jax.retrieval import baselines


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _data(seed=0, q=7, n=97, c=16):
  rng = np.random.default_rng(seed)
  # A shared direction makes most similarities positive, as with real descriptors, while
  # leaving some negative ones to exercise the clipping.
  common = rng.normal(size=c)
  qs = _unit(rng.normal(size=(q, c)) + 0.5 * common).astype(np.float32)
  db = _unit(rng.normal(size=(n, c)) + 0.5 * common).astype(np.float32)
  return qs, db


def _np_rank(q, db, t):
  s = q.astype(np.float64) @ db.astype(np.float64).T
  return np.argsort(-s, axis=1, kind="stable")[:, :t]


def _np_expand(q, db, top, k, alpha):
  out = []
  for qi, ti in zip(q.astype(np.float64), top):
    acc = qi.copy()  # the query itself, weight 1
    for j in ti[:k]:
      s = float(qi @ db[j])
      w = 1.0 if alpha is None else max(s, 0.0) ** alpha
      acc += w * db[j]
    out.append(acc / np.linalg.norm(acc))
  return np.array(out)


def _np_dba(db, k, alpha):
  d = db.astype(np.float64)
  s = d @ d.T
  out = []
  for j in range(len(d)):
    order = [i for i in np.argsort(-s[j], kind="stable") if i != j][:k]
    acc = d[j].copy()
    for i in order:
      acc += max(s[j, i], 0.0) ** alpha * d[i]
    out.append(acc / np.linalg.norm(acc))
  return np.array(out)


def _same_ranking(got, want, scores):
  """Equal rankings, allowing swaps only between near-ties (float32 vs float64 scores)."""
  got = np.asarray(got)
  assert got.shape == want.shape
  mismatch = got != want
  if mismatch.any():
    rows, cols = np.nonzero(mismatch)
    gap = np.abs(scores[rows, got[rows, cols]] - scores[rows, want[rows, cols]])
    assert gap.max() < 1e-5, f"rankings differ beyond ties: {gap.max()}"


def test_search_matches_numpy():
  q, db = _data()
  want = _np_rank(q, db, 20)
  _same_ranking(baselines.search(q, db, 20), want, q.astype(np.float64) @ db.T)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_aqe_matches_numpy(k):
  q, db = _data(1)
  top = _np_rank(q, db, 30)
  q2 = _np_expand(q, db, top, k, None)
  np.testing.assert_allclose(baselines.expand_queries(q, db, top, k), q2, atol=2e-6)
  _same_ranking(baselines.aqe(q, db, top, k=k), _np_rank(q2, db, 30), q2 @ db.T)


@pytest.mark.parametrize("k,alpha", [(2, 3.0), (5, 1.0), (8, 0.5)])
def test_alpha_qe_matches_numpy(k, alpha):
  q, db = _data(2)
  top = _np_rank(q, db, 30)
  q2 = _np_expand(q, db, top, k, alpha)
  np.testing.assert_allclose(baselines.expand_queries(q, db, top, k, alpha), q2, atol=2e-6)
  _same_ranking(baselines.alpha_qe(q, db, top, k=k, alpha=alpha), _np_rank(q2, db, 30), q2 @ db.T)


def test_alpha_qe_uses_the_given_ranking_not_a_fresh_search():
  # A re-ranker is a function of the first-round list it is handed: a reversed list expands with
  # the *worst* matches.
  q, db = _data(3)
  top = _np_rank(q, db, 97)[:, ::-1].copy()
  q2 = _np_expand(q, db, top, 3, 3.0)
  np.testing.assert_allclose(baselines.expand_queries(q, db, top, 3, 3.0), q2, atol=2e-6)


def test_negative_similarities_get_zero_weight():
  q = np.array([[1.0, 0.0]], np.float32)
  db = np.array([[-0.6, 0.8], [0.6, 0.8]], np.float32)
  top = np.array([[0, 1]])
  got = np.asarray(baselines.expand_queries(q, db, top, 2, 2.0))
  want = _unit(np.array([1.0, 0.0]) + 0.36 * np.array([0.6, 0.8]))
  np.testing.assert_allclose(got[0], want, atol=1e-6)


@pytest.mark.parametrize("k,alpha", [(1, 3.0), (3, 3.0), (6, 0.0)])
def test_alpha_dba_matches_numpy(k, alpha):
  q, db = _data(4)
  db2 = _np_dba(db, k, alpha)
  np.testing.assert_allclose(baselines.augment_database(db, k, alpha), db2, atol=2e-6)
  top = _np_rank(q, db, 25)
  got_top, got_db = baselines.alpha_dba(q, db, top, k=k, alpha=alpha, return_db=True)
  np.testing.assert_allclose(got_db, db2, atol=2e-6)
  _same_ranking(got_top, _np_rank(q, db2, 25), q @ db2.T)


def test_dba_blocks_and_exact_duplicates(monkeypatch):
  # Small blocks (with a padded last block) give the same database; an exact duplicate of a
  # vector is its neighbour, while the vector itself is never counted twice.
  _, db = _data(5, n=41)
  db[7] = db[3]
  monkeypatch.setattr(baselines, "_BLOCK_BYTES", 4 * 41 * 6)  # 6 rows per block
  assert baselines._block_rows(41) == 6
  got = np.asarray(baselines.augment_database(db, 4, 3.0))
  np.testing.assert_allclose(got, _np_dba(db, 4, 3.0), atol=2e-6)
  q, _ = _data(6, n=41)
  _same_ranking(baselines.search(q, db, 41), _np_rank(q, db, 41), q.astype(np.float64) @ db.T)


def test_k_zero_is_plain_search():
  q, db = _data(7)
  top = _np_rank(q, db, 10)
  np.testing.assert_array_equal(baselines.aqe(q, db, top, k=0), top)
  np.testing.assert_array_equal(baselines.alpha_qe(q, db, top, k=0), top)
  np.testing.assert_array_equal(baselines.alpha_dba(q, db, top, k=0), top)


def test_bad_sizes_raise():
  q, db = _data(8, n=10)
  top = _np_rank(q, db, 5)
  with pytest.raises(ValueError, match="k=6"):
    baselines.aqe(q, db, top, k=6)
  with pytest.raises(ValueError, match="k=10"):
    baselines.augment_database(db, 10)
  with pytest.raises(ValueError, match="same C"):
    baselines.search(q[:, :3], db, 5)
