"""csa_jax.bench.parity: the checks that make the race fair, and the original's affinity."""

import importlib.util

import jax
import numpy as np
import pytest

from csa_jax.bench import benchmark, contestants, parity
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


def test_check_close_fails_on_difference_nan_and_shape():
  assert parity.check_close([1.0, 2.0], [1.0, 2.00001], 1e-4, "x") < 1e-4
  with pytest.raises(parity.ParityError, match="differ"):
    parity.check_close([1.0, 2.0], [1.0, 2.1], 1e-4, "x")
  with pytest.raises(parity.ParityError):
    parity.check_close([np.nan], [np.nan], 1e-4, "x")
  with pytest.raises(parity.ParityError, match="shapes"):
    parity.check_close([1.0], [1.0, 1.0], 1e-4, "x")


@needs_torch
def test_torch_affinity_equals_csa_jax_affinity():
  import torch

  from csa_jax.core.affinity import rerank_affinity
  q, db, top = _data()
  for l in (5, 13):  # anchors within and beyond the K + 1 tokens
    a_jax = np.asarray(rerank_affinity(q, db, top, 12, l))
    a_torch = contestants.torch_affinity(torch.tensor(q), torch.tensor(db),
                                         torch.tensor(top).long(), 12, l).numpy()
    np.testing.assert_allclose(a_jax, a_torch, atol=1e-6)


@needs_torch
def test_parity_checks_pass_on_same_weights_and_fail_on_different():
  from csa_jax.interop import torch_reference
  params = benchmark.init_jitted(TINY, jax.random.key(0))
  q, db, top = _data()
  same = torch_reference.torch_model_from_params(params, TINY)
  assert parity.rerank_parity(params, TINY, same, q, db, top, 12, 1e-4) <= 1e-4
  other = torch_reference.torch_model_from_params(jax.tree.map(lambda p: p * 3.0, params), TINY)
  with pytest.raises(parity.ParityError, match="re-rank scores"):
    parity.rerank_parity(params, TINY, other, q, db, top, 12, 1e-4)
  aff = np.random.default_rng(0).random((2, 8, TINY.anchors), np.float32)
  y = np.zeros((2, 8), np.float32)
  y[:, :3] = 1.0
  assert parity.loss_parity(params, TINY, same, aff, y, 0.2, 1e-4) <= 1e-4
  with pytest.raises(parity.ParityError, match="training loss"):
    parity.loss_parity(params, TINY, other, aff, y, 0.2, 1e-4)
  # The checks leave the model as they found it.
  assert same.training and same.autocast


@needs_torch
def test_every_attention_variant_is_checked_against_pytorch():
  from csa_jax.bench import arena, machine
  from csa_jax.interop import torch_reference
  q, db, top = _data()
  names = arena.jax_names(["xla", "chunked"])
  a = arena.Arena(benchmark.init_jitted(TINY, jax.random.key(0)), TINY,
                  {n: TINY.replace(attention=v) for n, v in names.items()}, db, torch_reference,
                  machine.torch_device("cpu"))
  rerank = parity.arena_rerank_parity(a, q, top, 12, 1e-4)
  assert list(rerank) == ["csa_jax[xla]", "csa_jax[chunked]"]
  assert all(0 <= d["rerank_max_abs_diff"] <= 1e-4 for d in rerank.values())
  aff = np.random.default_rng(0).random((2, 8, TINY.anchors), np.float32)
  y = np.zeros((2, 8), np.float32)
  y[:, 0] = 1.0
  assert list(parity.arena_loss_parity(a, aff, y, 0.2, 1e-4)) == list(names)
  # A variant that computes something else stops the run.
  a.jax_cfgs["csa_jax[wrong]"] = TINY.replace(temperature=0.5)
  with pytest.raises(parity.ParityError, match="training loss"):
    parity.arena_loss_parity(a, aff, y, 0.2, 1e-4)
