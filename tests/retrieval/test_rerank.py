"""rerank_shortlist against a plain per-query loop (the original test.py's way), 1 and 8 devices.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csa_jax import parallel
from csa_jax.core import forward
from csa_jax.core.affinity import rerank_affinity
from csa_jax.core.config import Model, ModelConfig
from csa_jax.core.forward import rerank_scores
from csa_jax.errors import InputError
from csa_jax.interop import state_dict as interop
from csa_jax.retrieval.reorder import first_round_ranks, reorder_top
from csa_jax.retrieval.rerank import csa_rerank, rerank_shortlist

CFG = ModelConfig(anchors=8, dim=16, depth=1, heads=2)
K, T = 10, 14


def random_params(cfg, seed=0):
  """Random weights in the original layout (no Flax init to compile): varied, well-spread scores."""
  rng = np.random.default_rng(seed)
  sd = {k: rng.normal(0, 0.3, s).astype(np.float32)
        for k, s in interop._expected_shapes(cfg).items()}
  return interop.params_from_torch_state_dict(sd, heads=cfg.heads)[0]


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  db = rng.standard_normal((60, 12)).astype(np.float32)
  db /= np.linalg.norm(db, axis=1, keepdims=True)
  q = rng.standard_normal((5, 12)).astype(np.float32)
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  top = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :T]
  params = random_params(CFG)
  return params, q, db, top


def loop_rerank(params, q, db, top):
  """One query at a time, as the original test.py does."""
  out, new = top.copy(), []
  for i in range(len(q)):
    aff = rerank_affinity(q[i:i + 1], db, top[i:i + 1], K, CFG.anchors)
    s = np.asarray(rerank_scores(params, aff, CFG))[0]
    out[i, :K] = top[i, :K][np.argsort(-s, kind="stable")]
    new.append(s)
  return out, np.array(new)


@pytest.mark.parametrize("n_dev,batch", [(1, 2), (8, 3)])
@pytest.mark.parametrize("source", ["numpy", "memmap", "jax"])
def test_equals_per_query_loop(problem, tmp_path, monkeypatch, n_dev, batch, source):
  params, q, db, top = problem
  want, new = loop_rerank(params, q, db, top)
  gaps = np.diff(np.sort(new, axis=1), axis=1)
  assert gaps.min() > 1e-6  # no near-ties, so the orders must agree exactly
  if source == "memmap":
    np.save(tmp_path / "db.npy", db)
    db = np.load(tmp_path / "db.npy", mmap_mode="r")
  elif source == "jax":
    db = jnp.asarray(db)
  traces, real = [], forward.model_for
  monkeypatch.setattr(forward, "model_for", lambda cfg: traces.append(cfg) or real(cfg))
  got, scores = rerank_shortlist(q, db, top, Model(params, CFG), K, batch_size=batch,
                                 devices=jax.devices()[:n_dev])
  assert len(traces) <= 1  # traced at most once: one shape for every batch
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got[:, K:], top[:, K:])
  # The scores are CSA's, in the new order.
  np.testing.assert_allclose(scores, -np.sort(-new, axis=1), atol=1e-5)


def test_default_mesh_spans_every_device(problem):
  params, q, db, top = problem
  want, _ = loop_rerank(params, q, db, top)
  np.testing.assert_array_equal(rerank_shortlist(q, db, top, (params, CFG), K)[0], want)


def test_deprecated_csa_rerank_is_rerank_shortlist_with_a_mesh(problem):
  params, q, db, top = problem
  want, _ = rerank_shortlist(q, db, top, (params, CFG), K)
  mesh = parallel.make_mesh(jax.devices()[:2])
  with pytest.warns(DeprecationWarning, match="use rerank_shortlist"):
    got = csa_rerank(params, CFG, q, db, top, K, CFG.anchors, batch_size=3, mesh=mesh)
  np.testing.assert_array_equal(got, want)
  assert got.dtype == top.dtype


def test_reorder_top_is_stable():
  top = np.array([[7, 3, 5, 9, 1]])
  got = reorder_top(top, np.array([[0.5, 0.9, 0.5, 0.9]]))
  np.testing.assert_array_equal(got, [[3, 9, 7, 5, 1]])
  ids, scores = reorder_top(top, np.array([[0.5, 0.9, 0.5, 0.9]]), with_scores=True)
  np.testing.assert_array_equal(ids, got)
  np.testing.assert_array_equal(scores, [[0.9, 0.9, 0.5, 0.5]])
  np.testing.assert_array_equal(top, [[7, 3, 5, 9, 1]])  # the caller's array untouched


def test_first_round_ranks_undo_the_reordering():
  top = np.array([[7, 3, 5, 9, 1], [2, 4, 6, 8, -1]])
  ids = reorder_top(top, np.array([[0.5, 0.9, 0.5, 0.9], [0.1, 0.2, 0.3, 0.4]]))
  got = first_round_ranks(ids, top, 4)
  # By hand: row 0 is [3, 9, 7, 5, 1] (first-round ranks 2, 4, 1, 3, 5); row 1 reversed.
  np.testing.assert_array_equal(got, [[2, 4, 1, 3, 5], [4, 3, 2, 1, 5]])
  with pytest.raises(ValueError, match="row 0's first 4 ids are not a re-ordering"):
    first_round_ranks(np.array([[7, 3, 5, 1, 9]]), top[:1], 4)


def test_bad_sizes(problem):
  params, q, db, top = problem
  with pytest.raises(ValueError, match="anchors"), pytest.warns(DeprecationWarning):
    csa_rerank(params, CFG, q, db, top, K, 9)
  with pytest.raises(ValueError, match="ranked images"):
    rerank_shortlist(q, db, top[:, :5], (params, CFG), K)
  with pytest.raises(InputError, match=r"rerank_shortlist: K: expected an integer >= 1"):
    rerank_shortlist(q, db, top, (params, CFG), 0)


@pytest.mark.parametrize("model,found", [("cfg", "found ModelConfig"),
                                         ("swapped", "found (ModelConfig, dict)"),
                                         ("triple", "found 3 items")])
def test_a_model_that_is_not_params_and_config_is_refused(problem, model, found):
  params, q, db, top = problem
  bad = {"cfg": CFG, "swapped": (CFG, params), "triple": (params, CFG, 1)}[model]
  with pytest.raises(InputError, match=re.escape("rerank_shortlist: model: expected "
                                                 "Model(params, cfg)") + ".*" + re.escape(found)):
    rerank_shortlist(q, db, top, bad, K)
