"""The FAISS first round (the faiss extra): Flat equals the exact search, IVF pads with -1 as
``check_first_round`` accepts, and ``csa-jax rerank --first-round`` on FAISS's ids equals
``rerank_shortlist`` on them. Skipped where faiss is not installed, except the missing-faiss
message."""

import sys

import numpy as np
import pytest

from toy_retrieval import spread_params

from csa_jax.cli import main as cli
from csa_jax.core.config import ModelConfig
from csa_jax.core.normalize import l2_normalize
from csa_jax.errors import InputError
from csa_jax.interop.export import save_export
from csa_jax.retrieval.faiss_search import build_faiss_index, faiss_first_round
from csa_jax.retrieval.first_round import check_first_round
from csa_jax.retrieval.rerank import rerank_shortlist
from csa_jax.retrieval.search import top_k_search

CFG = ModelConfig(anchors=8, dim=16, depth=1, heads=2)
C, NQ, NDB, K, T = 16, 6, 600, 6, 20


@pytest.fixture(scope="module")
def faiss():
  return pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  db = l2_normalize(rng.standard_normal((NDB, C)).astype(np.float32))
  q = l2_normalize(rng.standard_normal((NQ, C)).astype(np.float32))
  params = spread_params(CFG, rng)
  return q, db, params


def assert_same_ranking_ties_aside(got, want, scores_QxN):
  """Equal ids, or where they differ, ids whose scores tie (float rounding of two BLAS)."""
  differ = got != want
  s_got = np.take_along_axis(scores_QxN, got, 1)
  s_want = np.take_along_axis(scores_QxN, want, 1)
  np.testing.assert_allclose(s_got, s_want, atol=1e-6)
  assert differ.sum() <= 2, np.argwhere(differ)


def test_missing_faiss_is_one_line(data, monkeypatch):
  q, db, _ = data
  monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
  with pytest.raises(InputError, match=r"^faiss_first_round: faiss: expected the faiss package "
                     r"\(pip install 'csa_jax\[faiss\]'") as e:
    faiss_first_round(q, db, T)
  assert "\n" not in str(e.value)


def test_flat_ip_is_the_exact_search(faiss, data, tmp_path):
  q, db, _ = data
  scores = q.astype(np.float64) @ db.T.astype(np.float64)
  _, exact = top_k_search(q, db, T)
  ids = faiss_first_round(q, db, T, "Flat")
  assert ids.shape == (NQ, T) and ids.dtype == np.int64
  assert_same_ranking_ties_aside(ids, exact, scores)
  np.save(tmp_path / "db.npy", db)  # a memmap: added a block at a time, rows checked
  mm = np.load(tmp_path / "db.npy", mmap_mode="r")
  np.testing.assert_array_equal(faiss_first_round(q, mm, T, "Flat"), ids)
  # An IVF index probing every list is exact too; nprobe reaches it.
  index = build_faiss_index(db, "IVF8,Flat")
  assert index.ntotal == NDB
  assert_same_ranking_ties_aside(faiss_first_round(q, db, T, index=index, nprobe=8), exact,
                                 scores)


def test_ivf_pads_with_minus_one_at_the_end(faiss, data):
  q, db, _ = data
  # 64 lists of about 9 rows, one probed: fewer than T found for every query.
  ids = faiss_first_round(q, db, T, "IVF64,Flat", nprobe=1, train_size=NDB)
  pad = ids == -1
  assert pad.any()
  lead = np.where(pad.any(1), pad.argmax(1), T)
  assert (pad.sum(1) == T - lead).all()  # trailing only
  check_first_round(ids, NDB, 1, 1, "faiss")  # the rule accepts it where a row holds >= 1 id
  with pytest.raises(InputError, match=r"db ids before any -1 padding.*retrieve more"):
    check_first_round(ids, NDB, T, CFG.anchors, "faiss")


@pytest.mark.parametrize("kw,match", [
    ({"index_factory": "NoSuchIndex12"}, r"index_factory: expected a FAISS index factory string"),
    ({"index_factory": "Flat", "params": "nprobe=4"}, r"params: expected search parameters"),
    ({"index_factory": "Flat", "T": NDB + 1}, r"T: expected 1 <= T <= N = 600"),
    ({"index_factory": "IVF512,Flat", "train_size": 100}, r"train_size: expected enough rows")])
def test_bad_settings_are_one_line(faiss, data, kw, match):
  q, db, _ = data
  kw = {"T": T, **kw}
  with pytest.raises(InputError, match=match) as e:
    faiss_first_round(q, db, **kw)
  assert "\n" not in str(e.value)


def test_rerank_first_round_of_faiss_ids_is_rerank_shortlist(faiss, data, tmp_path, capsys):
  q, db, params = data
  ids = faiss_first_round(q, db, T, "IVF8,Flat", nprobe=2)
  np.save(tmp_path / "ids.npy", ids)
  np.save(tmp_path / "q.npy", q)
  np.save(tmp_path / "db.npy", db)
  save_export(tmp_path / "model.npz", params, CFG)
  base = ["rerank", "--query", str(tmp_path / "q.npy"), "--db", str(tmp_path / "db.npy"),
          "--model", str(tmp_path / "model.npz"), "--K", str(K), "--batch-size", "4"]
  assert cli.main(base + ["--first-round", str(tmp_path / "ids.npy"),
                          "--out", str(tmp_path / "r.npz")]) == 0, capsys.readouterr().err
  want, want_scores = rerank_shortlist(q, db, ids, (params, CFG), K, batch_size=4)
  z = np.load(tmp_path / "r.npz")
  np.testing.assert_array_equal(z["ids"], want)
  np.testing.assert_array_equal(z["scores"][:, :K], want_scores)
  # --faiss in the command: the same ids as saving them first.
  assert cli.main(base + ["--faiss", "IVF8,Flat", "--faiss-params", "nprobe=2", "--T", str(T),
                          "--out", str(tmp_path / "f.npz")]) == 0, capsys.readouterr().err
  f = np.load(tmp_path / "f.npz")
  np.testing.assert_array_equal(f["ids"], z["ids"])
  np.testing.assert_array_equal(f["scores"], z["scores"])
