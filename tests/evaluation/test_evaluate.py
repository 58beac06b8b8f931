"""The one evaluation routine against a full numpy argsort, with and without a model."""

import logging

import jax
import numpy as np
import pytest

from csa_jax.core.config import Model, ModelConfig
from csa_jax.core.forward import init_params
from csa_jax.core.normalize import l2_normalize
from csa_jax.errors import InputError
from csa_jax.evaluation.evaluate import evaluate, mean_ap_percent
from csa_jax.evaluation.revisited import PROTOCOLS, revisited_map
from csa_jax.retrieval.rerank import rerank_shortlist

C, NQ, NDB = 16, 4, 60
CFG = ModelConfig(anchors=8, dim=16, depth=1, heads=2)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  q = l2_normalize(rng.standard_normal((NQ, C)))
  db = l2_normalize(rng.standard_normal((NDB, C)))
  db[:20] = l2_normalize(np.repeat(q, 5, 0) + 0.9 * rng.standard_normal((20, C)))
  # Index 40 is a random image: a hard positive ranked low, below a truncated list's end.
  gnd = [{"easy": list(range(5 * i, 5 * i + 2)), "hard": list(range(5 * i + 2, 5 * i + 4)) + [40],
          "junk": [5 * i + 4]} for i in range(NQ)]
  ranks_QxN = np.argsort(-(q.astype(np.float64) @ db.T.astype(np.float64)), axis=1,
                         kind="stable")
  return q, db, gnd, ranks_QxN


def assert_results_equal(got, want):
  for p in PROTOCOLS:
    np.testing.assert_allclose(got[p]["aps"], want[p]["aps"], rtol=1e-12, err_msg=p)
    np.testing.assert_allclose(got[p]["map"], want[p]["map"], rtol=1e-12, err_msg=p)


def test_first_round_is_exact_where_a_truncated_ranking_under_reports(data):
  q, db, gnd, ranks_QxN = data
  res = evaluate(q, db, gnd)
  assert res["csa"] is None
  assert_results_equal(res["first_round"], revisited_map(ranks_QxN, gnd))
  assert res["info"]["queries"] == NQ and res["info"]["db_images"] == NDB
  assert set(res["info"]["seconds"]) == {"search", "evaluate"}
  truncated = revisited_map(ranks_QxN[:, :10], gnd)  # positive 40 lies below rank 10
  assert truncated["hard"]["map"] < res["first_round"]["hard"]["map"]
  assert all(truncated[p]["map"] <= res["first_round"][p]["map"] for p in PROTOCOLS)


def test_csa_reranks_the_top_k_and_keeps_the_rest_by_score(data):
  q, db, gnd, ranks_QxN = data
  params = init_params(CFG, jax.random.key(0))
  k = 6
  res = evaluate(q, db, gnd, model=(params, CFG), K=k)
  top_QxT = ranks_QxN[:, :max(k, CFG.anchors - 1)]
  new_top = rerank_shortlist(q, db, top_QxT, (params, CFG), k)[0][:, :k]
  spliced = np.stack([np.concatenate([t, r[~np.isin(r, t)]]) for r, t in zip(ranks_QxN, new_top)])
  assert_results_equal(res["csa"], revisited_map(spliced, gnd))
  assert_results_equal(res["first_round"], revisited_map(ranks_QxN, gnd))
  assert (res["info"]["K"], res["info"]["L"]) == (k, CFG.anchors)
  same = evaluate(q, db, gnd, Model(params, CFG), k, devices=jax.local_devices())
  assert_results_equal(same["csa"], res["csa"])


def test_k_beyond_the_database_and_bad_model(data, caplog):
  q, db, gnd, _ = data
  params = init_params(CFG, jax.random.key(1))
  with caplog.at_level(logging.WARNING, logger="csa_jax"):
    res = evaluate(q, db, gnd, model=(params, CFG), K=NDB + 5)
  assert res["info"]["K"] == NDB and "exceeds the 60 database images" in caplog.text
  with pytest.raises(InputError, match=r"evaluate: model: expected Model\(params, cfg\).*found "
                     r"\(ModelConfig, dict\)"):
    evaluate(q, db, gnd, model=(CFG, params))
  with pytest.raises(InputError, match="feats.npz: db: expected at least L-1 = 7 images"):
    evaluate(q, db[:6], [{"easy": [0], "hard": [], "junk": []}] * NQ, model=(params, CFG),
             source="feats.npz")


def test_mean_ap_percent_rounds_to_two_decimals():
  res = {p: {"map": v} for p, v in zip(PROTOCOLS, (0.5, 5 / 12, float("nan")))}
  got = mean_ap_percent(res)
  assert got["easy"] == 50.0 and got["medium"] == 41.67 and np.isnan(got["hard"])
