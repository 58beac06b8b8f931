"""The host drivers refuse what would give wrong numbers, and normalise like the CLI.

Each case is one the public API used to answer with a wrong ranking and no word: a NaN query
(id 2147483647 or an IndexError), ids past the end or -1 padding (clamped by the gather to a
real row), unnormalised descriptors (37 of 48 top-K ids changed), K=0 (a message about L).
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toy_retrieval import spread_params

from csa_jax import (InputError, evaluate, rerank_affinity, rerank_shortlist, search_and_rerank,
                     top_k_search)
from csa_jax.core.config import ModelConfig
from csa_jax.data import descriptors, large_descriptors
from csa_jax.retrieval.search import StackedRows

CFG = ModelConfig(anchors=8, dim=16, depth=1, heads=2)
K = 10


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  db, q = _unit(rng.standard_normal((60, 12))), _unit(rng.standard_normal((5, 12)))
  params = spread_params(CFG, rng)
  top = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :14]
  return params, q, db, top


@pytest.mark.parametrize("impl", ["host", "jax"])
def test_search_refuses_a_nan_query(problem, impl):
  _, q, db, _ = problem
  q = q.copy()
  q[3, 5] = np.nan
  with pytest.raises(InputError, match=r"q_QxC\[3\]: expected finite values"):
    top_k_search(q, db, 5, impl=impl)


@pytest.mark.parametrize("impl", ["host", "jax"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_search_refuses_a_nonfinite_db_row_as_it_scores_it(problem, tmp_path, impl, bad):
  _, q, db, _ = problem
  db = db.copy()
  db[41, 2] = bad
  np.save(tmp_path / "db.npy", db)
  mm = np.load(tmp_path / "db.npy", mmap_mode="r")
  for source in (db, mm):  # a memmap is not scanned up front: the search finds the row
    with pytest.raises(InputError, match=r"db\.npy: db\[41\]: expected finite values"):
      top_k_search(q, source, 5, block=16, impl=impl, source=str(tmp_path / "db.npy"))


@pytest.mark.parametrize("bad_id,needle", [(60, "60"), (-1, "-1"), (1000, "1000")])
def test_rerank_refuses_ids_outside_the_db(problem, bad_id, needle):
  params, q, db, top = problem
  top = top.copy()
  top[2, 4] = bad_id
  with pytest.raises(InputError, match=rf"top_QxT\[2, 4\]: expected db ids in \[0, N=60\).*"
                     rf"found {needle}"):
    rerank_shortlist(q, db, top, (params, CFG), K)


def test_rerank_refuses_an_id_twice(problem):
  params, q, db, top = problem
  top = top.copy()
  top[1, 6] = top[1, 2]
  with pytest.raises(InputError, match=r"top_QxT\[1\]: expected distinct db ids.*twice"):
    rerank_shortlist(q, db, top, (params, CFG), K)
  top2 = problem[3].copy()
  top2[1, 13] = top2[1, 2]  # past the columns CSA uses (max(K, L-1) = 10): harmless
  rerank_shortlist(q, db, top2, (params, CFG), K)


def test_affinity_checks_concrete_ids(problem):
  _, q, db, top = problem
  bad = top.copy()
  bad[0, 0] = 60
  for ids in (bad, jnp.asarray(bad)):
    with pytest.raises(InputError, match=r"expected db ids in \[0, N=60\), found 60"):
      rerank_affinity(q, db, ids, K, CFG.anchors)
  bad[0, 0] = -1
  with pytest.raises(InputError, match="found -1"):
    rerank_affinity(q, db, bad, K, CFG.anchors)


def test_unnormalised_descriptors_are_normalised_with_a_warning(problem, caplog):
  params, q, db, _ = problem
  want = search_and_rerank(q, db, (params, CFG), K, 20)
  with caplog.at_level(logging.WARNING, logger="csa_jax"):
    got = search_and_rerank(q * 10, db, (params, CFG), K, 20)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
  assert any("q_QxC: 5 of 5 rows are not L2-normalised" in r.getMessage()
             for r in caplog.records), caplog.text
  caplog.clear()
  scaled = db * np.linspace(0.5, 3, len(db), dtype=np.float32)[:, None]
  with caplog.at_level(logging.WARNING, logger="csa_jax"):
    got = search_and_rerank(q, scaled, (params, CFG), K, 20)
  np.testing.assert_array_equal(got[0], want[0])
  assert any("db: " in r.getMessage() and "re-normalised" in r.getMessage()
             for r in caplog.records), caplog.text
  assert np.abs(np.linalg.norm(scaled, axis=1) - 1).max() > 1  # the caller's array untouched


def test_zero_query_and_memmap_rows_off_unit_are_refused(problem, tmp_path):
  params, q, db, top = problem
  z = q.copy()
  z[4] = 0
  with pytest.raises(InputError, match=r"q_QxC\[4\]: expected a descriptor with a direction"):
    rerank_shortlist(z, db, top, (params, CFG), K)
  off = db.copy()
  off[top[0, 3]] *= 2
  np.save(tmp_path / "db.npy", off)
  mm = np.load(tmp_path / "db.npy", mmap_mode="r")
  with pytest.raises(InputError, match=rf"db\[{top[0, 3]}\]: expected an L2-normalised row"):
    rerank_shortlist(q, mm, top, (params, CFG), K)


def test_nonfinite_params_are_refused(problem):
  params, q, db, top = problem
  bad = jax.tree.map(np.array, params)  # a copy
  bad["blocks_0"]["attn"]["proj"]["bias"][3] = np.nan
  with pytest.raises(InputError, match=r"params\['blocks_0'\]\['attn'\]\['proj'\]\['bias'\]: "
                     "expected finite values"):
    rerank_shortlist(q, db, top, (bad, CFG), K)


def test_evaluate_refuses_k0_and_bad_gnd(problem):
  params, q, db, _ = problem
  gnd = [{"easy": [0, 1], "hard": [2], "junk": []} for _ in range(len(q))]
  with pytest.raises(InputError, match=r"evaluate: K: expected an integer >= 1.*found 0"):
    evaluate(q, db, gnd, model=(params, CFG), K=0)
  gnd[2] = {"easy": [0, 60], "hard": [], "junk": []}
  with pytest.raises(InputError, match=r"gnd\[2\]\.easy: expected indices in \[0, 60\)"):
    evaluate(q, db, gnd)
  with pytest.raises(InputError, match=r"gnd: expected a list of 5 entries.*found 4 entries"):
    evaluate(q, db, gnd[:4])


def _r1m_error(path, **kw):
  with pytest.raises(InputError) as e:
    large_descriptors.load_r1m(path, **kw)
  return str(e.value)


@pytest.mark.parametrize("impl", ["host", "jax"])
@pytest.mark.parametrize("bad", ["nan", "inf", "zero", "zero_then_nan", "nan_in_next_block"])
def test_deferred_r1m_refuses_a_bad_row_as_the_eager_scan_does(problem, tmp_path, monkeypatch,
                                                                impl, bad):
  # csa-jax eval checks R1M's rows as the search scores them: the error must be the one the
  # full scan before the search gave, whichever worker meets which bad row first.
  _, q, db, _ = problem
  monkeypatch.setattr(descriptors, "BLOCK_BYTES", 8 * 12 * 100)  # scan blocks of 100 rows
  x = np.tile(db, (50, 1))  # 3000 unit rows
  rows = {"nan": [(2345, np.nan)], "inf": [(2345, np.inf)], "zero": [(2345, 0)],
          # a zero row and, later in the same scan block but another search block, a NaN
          "zero_then_nan": [(2310, 0), (2390, np.nan)],
          "nan_in_next_block": [(2399, 0), (2400, np.nan), (2950, np.nan)]}[bad]
  for r, v in rows:
    if v == 0:
      x[r] = 0
    else:
      x[r, 7] = v
  np.save(tmp_path / "r1m.npy", x)
  want = _r1m_error(tmp_path / "r1m.npy")
  assert "r1m.npy: r1m: expected " in want
  deferred = large_descriptors.load_r1m(tmp_path / "r1m.npy", defer=True)
  stacked = StackedRows([db, deferred])
  for _ in range(2):  # the same error each time, also for a second search
    with pytest.raises(InputError) as e:
      top_k_search(q, stacked, 5, block=48, impl=impl)
    assert str(e.value) == want
