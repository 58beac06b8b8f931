"""``search_and_rerank`` (behind ``csa-jax rerank``) against rerank_shortlist and numpy; the
user's files (``user_rerank``); the deprecated ``rerank``."""

import json
import pickle
import re

import numpy as np
import pytest

from toy_retrieval import spread_params

from csa_jax.core.affinity import rerank_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import rerank_scores
from csa_jax.core.normalize import l2_normalize
from csa_jax.errors import InputError
from csa_jax.retrieval import user_rerank
from csa_jax.retrieval.rerank import rerank_shortlist, search_and_rerank
from csa_jax.retrieval.search import StackedRows, top_k_search

C, NQ, NDB, K, T = 16, 5, 60, 6, 12
CFG = ModelConfig(anchors=8, dim=16, depth=1, heads=2)


def model():
  """Random weights large enough that CSA's scores are well apart (no near-ties to flip)."""
  return spread_params(CFG, np.random.default_rng(1)), CFG


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  q = l2_normalize(rng.standard_normal((NQ, C)).astype(np.float32))
  db = l2_normalize(rng.standard_normal((NDB, C)).astype(np.float32))
  db[:25] = l2_normalize(np.repeat(q, 5, 0) + 0.9 * rng.standard_normal((25, C)))
  return q, db, model()


def full_ranking(q, db):
  return np.argsort(-(q.astype(np.float64) @ db.T.astype(np.float64)), axis=1, kind="stable")


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_top_k_is_rerank_shortlist_and_tail_is_first_round(data, batch_size):
  q, db, (params, cfg) = data
  ids, scores = search_and_rerank(q, db, (params, cfg), K, T, batch_size=batch_size)
  assert ids.shape == scores.shape == (NQ, T)
  assert ids.dtype == np.int64 and scores.dtype == np.float32
  first = full_ranking(q, db)
  for i in range(NQ):
    assert sorted(ids[i, :K]) == sorted(first[i, :K])  # a permutation of the first-round top-K
  np.testing.assert_array_equal(ids[:, K:], first[:, K:T])
  _, top = top_k_search(q, db, max(T, cfg.anchors - 1))
  want, want_scores = rerank_shortlist(q, db, top, (params, cfg), K, batch_size=batch_size)
  np.testing.assert_array_equal(ids, want[:, :T])
  np.testing.assert_array_equal(scores[:, :K], want_scores)
  # Scores: CSA's (descending) for the top-K, the first round's dot products after.
  assert np.all(np.diff(scores[:, :K], axis=1) <= 0)
  np.testing.assert_allclose(scores[:, K:], np.take_along_axis(q @ db.T, ids[:, K:], 1),
                             atol=1e-6)
  for i in range(NQ):
    aff = rerank_affinity(q[i:i + 1], db, first[i:i + 1, :cfg.anchors - 1], K, cfg.anchors)
    s = np.asarray(rerank_scores(params, aff, cfg))[0]
    np.testing.assert_allclose(scores[i, :K], np.sort(s)[::-1], atol=1e-5)
    np.testing.assert_array_equal(ids[i, :K], first[i, :K][np.argsort(-s, kind="stable")])


def test_default_t_is_k_and_memmap_and_stacked_db(data, tmp_path):
  q, db, m = data
  ids, _ = search_and_rerank(q, db, m, K)
  assert ids.shape == (NQ, K)
  np.save(tmp_path / "db.npy", db)
  mm = user_rerank.load_database(tmp_path / "db.npy")
  assert isinstance(mm, np.memmap)
  ids2, _ = search_and_rerank(q, mm, m, K)
  np.testing.assert_array_equal(ids, ids2)
  stacked = StackedRows([db[:30], db[30:]])
  ids3, _ = search_and_rerank(q, stacked, m, K, T)
  np.testing.assert_array_equal(ids3[:, :K], ids)


@pytest.mark.parametrize("bad", ["t_below_k", "t_above_n", "width", "k_zero", "small_db"])
def test_bad_arguments_are_input_errors(data, bad):
  q, db, m = data
  kw = {"K": K, "T": T}
  if bad == "t_below_k":
    kw["T"], want = K - 1, "search_and_rerank: T: expected T >= K = 6"
  elif bad == "t_above_n":
    kw["T"], want = NDB + 1, "db: expected at least T = 61 images"
  elif bad == "width":
    q, want = q[:, :8], "q_QxC: expected (Q >= 1, C=16)"
  elif bad == "k_zero":
    kw["K"], want = 0, "search_and_rerank: K: expected an integer >= 1"
  else:
    db, kw, want = db[:5], {"K": 2, "T": 3}, "db: expected at least L-1 = 7 images"
  with pytest.raises(InputError, match=re.escape(want)):
    search_and_rerank(q, db, m, **kw)


def test_deprecated_rerank_is_search_and_rerank_and_checks_l(data):
  q, db, m = data
  want = search_and_rerank(q, db, m, K, T)
  with pytest.warns(DeprecationWarning, match="use search_and_rerank"):
    got = user_rerank.rerank(q, db, m, K, T, L=CFG.anchors)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  with pytest.raises(InputError, match=re.escape("rerank: L: expected 8")), \
      pytest.warns(DeprecationWarning):
    user_rerank.rerank(q, db, m, K, T, L=9)
  with pytest.raises(InputError, match=re.escape("rerank: T: expected T >= K = 6")), \
      pytest.warns(DeprecationWarning):
    user_rerank.rerank(q, db, m, K, K - 1)


def test_load_database_and_queries(data, tmp_path):
  q, db, _ = data
  np.save(tmp_path / "db2.npy", db * 3)  # not unit-norm: read and re-normalised, no memmap
  x = user_rerank.load_database(tmp_path / "db2.npy")
  assert not isinstance(x, np.memmap)
  np.testing.assert_allclose(x, db, atol=1e-6)
  (tmp_path / "feats.pkl").write_bytes(pickle.dumps({"db": db.T.copy(), "query": q.T.copy()}))
  np.testing.assert_allclose(user_rerank.load_database(tmp_path / "feats.pkl"), db, atol=1e-7)
  np.testing.assert_allclose(user_rerank.load_queries(tmp_path / "feats.pkl", dim=C), q,
                             atol=1e-7)
  np.save(tmp_path / "q.npy", q[:, :8])
  with pytest.raises(InputError, match="q.npy: query: expected descriptor size C=16"):
    user_rerank.load_queries(tmp_path / "q.npy", dim=C)


def test_load_names(tmp_path):
  (tmp_path / "a.txt").write_text("img 0\r\nimg1\n  img2  \n\n\n", encoding="utf-8")
  assert user_rerank.load_names(tmp_path / "a.txt", 3, "imlist") == ["img 0", "img1", "img2"]
  (tmp_path / "b.json").write_text(json.dumps(["é", 7, "c"]))
  assert user_rerank.load_names(tmp_path / "b.json", 3, "qimlist") == ["é", "7", "c"]
  (tmp_path / "gnd.json").write_text(json.dumps({"imlist": ["x", "y"], "qimlist": ["q"],
                                                 "gnd": []}))
  assert user_rerank.load_names(tmp_path / "gnd.json", 2, "imlist") == ["x", "y"]
  assert user_rerank.load_names(tmp_path / "gnd.json", 1, "qimlist") == ["q"]
  (tmp_path / "gaps.txt").write_text("a\n\nb\n")
  for path, n, want in (("a.txt", 4, "a.txt: imlist: expected 4 names (one per descriptor), "
                         "found 3 names"),
                        ("gaps.txt", 2, "gaps.txt: imlist[1]: expected a name on every line"),
                        ("missing.txt", 1, "missing.txt: file: expected a readable names file")):
    with pytest.raises(InputError, match=re.escape(want)):
      user_rerank.load_names(tmp_path / path, n, "imlist")
