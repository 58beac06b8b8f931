"""csa_jax.bench.race: the cost model, the parity checks that make the race fair, the timing."""

import importlib.util

import jax
import numpy as np
import pytest

from csa_jax.bench import race as br
from csa_jax.core.config import ModelConfig

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch (optional extra) not installed")
TINY = ModelConfig(anchors=8, dim=16, depth=1, heads=2, drop=0.0, attn_drop=0.0, drop_path=0.0)


def _data(n_db=32, c=16, q=2, t=12, seed=0):
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  db = unit(rng.standard_normal((n_db, c), np.float32))
  qs = unit(rng.standard_normal((q, c), np.float32))
  top = np.argsort(-(qs @ db.T), axis=1)[:, :t].astype(np.int32)
  return qs, db, top


def test_flops_match_a_layer_by_layer_count():
  cfg = ModelConfig()
  n, l, d = 1025, 512, 768
  # Every matmul of the model, as (rows, contraction, cols) of one sample.
  mats = [(n, l, d)] + cfg.depth * [(n, d, 3 * d), (n, d, n), (n, n, d), (n, d, d),
                                    (n, d, 4 * d), (n, 4 * d, d)]
  expected = sum(2 * a * b * c for a, b, c in mats)
  assert br.forward_flops(cfg, n) == expected
  assert br.forward_flops(cfg, n, align=True) == expected + 2 * n * d * l
  assert 35e9 < br.forward_flops(cfg, n) < 37e9  # docs/method.md section 9: "about 36 GFLOP"
  assert br.rerank_flops(cfg, 1024, 2048) == expected + 2 * n * l * 2048
  assert br.train_flops(cfg, 512) == 3 * br.forward_flops(cfg, 512, align=True)


def test_check_close_fails_on_difference_nan_and_shape():
  assert br.check_close([1.0, 2.0], [1.0, 2.00001], 1e-4, "x") < 1e-4
  with pytest.raises(br.ParityError, match="differ"):
    br.check_close([1.0, 2.0], [1.0, 2.1], 1e-4, "x")
  with pytest.raises(br.ParityError):
    br.check_close([np.nan], [np.nan], 1e-4, "x")
  with pytest.raises(br.ParityError, match="shapes"):
    br.check_close([1.0], [1.0, 1.0], 1e-4, "x")


def test_race_interleaves_and_survives_a_failing_contestant():
  order = []

  def fn(name):
    return lambda: order.append(name)

  def oom():
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")

  out = br.race({"a": fn("a"), "b": oom, "c": fn("c")}, repeats=3,
                memory=lambda n, f: (123, "test"), label="t")
  assert out["b"]["error"].startswith("out of memory")
  # First calls alone, then rounds a, c, a, c, a, c.
  assert order == ["a", "c"] + ["a", "c"] * 3
  for name in "ac":
    assert len(out[name]["steady_s"]) == 3 and out[name]["peak_mem_bytes"] == 123
    assert out[name]["steady_median_s"] == pytest.approx(np.median(out[name]["steady_s"]))


def test_matmul_peak_is_positive_and_the_best_of_both():
  res = br.matmul_peak(64, "float32", None, repeats=2)
  assert res["jax_flops"] > 0 and res["device_peak_flops"] == res["jax_flops"]


@needs_torch
def test_torch_affinity_equals_csa_jax_affinity():
  import torch
  from csa_jax.core.affinity import rerank_affinity
  q, db, top = _data()
  for l in (5, 13):  # anchors within and beyond the K + 1 tokens
    a_jax = np.asarray(rerank_affinity(q, db, top, 12, l))
    a_torch = br.torch_affinity(torch.tensor(q), torch.tensor(db),
                                torch.tensor(top).long(), 12, l).numpy()
    np.testing.assert_allclose(a_jax, a_torch, atol=1e-6)


@needs_torch
def test_parity_checks_pass_on_same_weights_and_fail_on_different():
  from csa_jax.interop import torch_reference as tm
  params = br.init_jitted(TINY, jax.random.key(0))
  q, db, top = _data()
  same = tm.torch_model_from_params(params, TINY)
  assert br.rerank_parity(params, TINY, same, q, db, top, 12, 1e-4) <= 1e-4
  other = tm.torch_model_from_params(jax.tree.map(lambda p: p * 3.0, params), TINY)
  with pytest.raises(br.ParityError, match="re-rank scores"):
    br.rerank_parity(params, TINY, other, q, db, top, 12, 1e-4)
  aff = np.random.default_rng(0).random((2, 8, TINY.anchors), np.float32)
  y = np.zeros((2, 8), np.float32)
  y[:, :3] = 1.0
  assert br.loss_parity(params, TINY, same, aff, y, 0.2, 1e-4) <= 1e-4
  with pytest.raises(br.ParityError, match="training loss"):
    br.loss_parity(params, TINY, other, aff, y, 0.2, 1e-4)
  # The checks leave the model as they found it.
  assert same.training and same.autocast
