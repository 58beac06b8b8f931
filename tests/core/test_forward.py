"""Jit behaviour of the pure entry points."""

import jax
import numpy as np

from csa_jax import ModelConfig
from csa_jax import init_params
from csa_jax import rerank_scores
from csa_jax import training_outputs
from csa_jax.core import forward

CFG = ModelConfig(anchors=16, dim=32, depth=1, heads=4)


def count_traces(monkeypatch) -> list:
  """Records every trace of the forward entry points: ``model_for`` runs only while tracing."""
  traces = []
  real = forward.model_for

  def counting(cfg):
    traces.append(cfg)
    return real(cfg)

  monkeypatch.setattr(forward, "model_for", counting)
  return traces


def test_rerank_scores_traces_once_per_shape(monkeypatch):
  params = init_params(CFG, jax.random.key(0))
  rng = np.random.default_rng(0)
  rerank_scores.clear_cache()  # earlier tests may have compiled these shapes already
  traces = count_traces(monkeypatch)
  outs = [rerank_scores(params, rng.normal(size=(3, 11, 16)).astype(np.float32), CFG)
          for _ in range(4)]
  assert len(traces) == 1
  assert all(o.shape == (3, 10) for o in outs)
  rerank_scores(params, rng.normal(size=(2, 11, 16)).astype(np.float32), CFG)  # new shape
  assert len(traces) == 2
  # An equal (not identical) config hits the same cache entry: configs are static by value.
  rerank_scores(params, rng.normal(size=(2, 11, 16)).astype(np.float32), CFG.replace())
  assert len(traces) == 2


def test_scores_are_cosines_in_range_and_match_training_logits():
  params = init_params(CFG, jax.random.key(1))
  x = np.random.default_rng(1).normal(size=(2, 6, 16)).astype(np.float32)
  s = np.asarray(rerank_scores(params, x, CFG))
  assert np.all(np.abs(s) <= 1 + 1e-6)
  logits, mse = training_outputs(params, x, CFG)
  # Token 0 against itself is cos = 1, so logit 0 is exactly 1/t.
  np.testing.assert_allclose(np.asarray(logits)[:, 0], 1 / CFG.temperature, atol=1e-6)
  np.testing.assert_allclose(np.asarray(logits)[:, 1:] * CFG.temperature, s, atol=1e-6)
  assert 1e-2 <= float(mse) <= 2.0  # sqrt of a clipped squared distance of unit vectors


def test_scores_do_not_depend_on_token_order():
  # No positional encoding: permuting candidates permutes their scores (docs/method.md section 2).
  params = init_params(CFG, jax.random.key(2))
  x = np.random.default_rng(2).normal(size=(1, 9, 16)).astype(np.float32)
  perm = np.concatenate([[0], 1 + np.random.default_rng(3).permutation(8)])
  s = np.asarray(rerank_scores(params, x, CFG))[0]
  sp = np.asarray(rerank_scores(params, x[:, perm], CFG))[0]
  np.testing.assert_allclose(sp, s[perm[1:] - 1], atol=1e-5)
