"""interop/torch_reference: the original architecture in PyTorch, two-way interop with csa_jax."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from csa_jax.interop import state_dict as interop  # noqa: E402
from csa_jax.interop import torch_reference as tm  # noqa: E402
from csa_jax.core.config import ModelConfig  # noqa: E402
from csa_jax.core.losses import csa_loss  # noqa: E402
from csa_jax.core.forward import init_params, rerank_scores, training_outputs  # noqa: E402

TINY = ModelConfig(anchors=16, dim=24, depth=2, heads=3, mlp_ratio=2)
init_params = jax.jit(init_params, static_argnums=0)  # one compilation, not one per op


@pytest.fixture(scope="module")
def ref(data_dir):
  z = np.load(data_dir / "csa_tiny_reference.npz")
  return {k: z[k] for k in z.files}


def _sd(ref):
  return {k[len("param/"):]: v for k, v in ref.items() if k.startswith("param/")}


def _np(t):
  return t.detach().cpu().numpy()


@pytest.mark.slow
def test_import_csa_jax_does_not_import_torch():
  code = ("import sys, csa_jax, csa_jax.interop.torch_reference, csa_jax.bench.benchmark; "
          "assert 'torch' not in sys.modules, 'torch imported'")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_reproduces_original_outputs_loss_and_grads(ref):
  # tests/fixtures holds what the original PyTorch code gives for these weights and this input.
  cfg = interop.params_from_torch_state_dict(_sd(ref), heads=4)[1]
  model = tm.build_torch_model(cfg, _sd(ref)).eval()
  x = torch.tensor(ref["x"])
  with torch.no_grad():
    np.testing.assert_allclose(_np(model.forward_feature(x)), ref["scores"], atol=1e-6)
  exp_sim, mse = model(x)
  loss, con = tm.original_loss(exp_sim, torch.tensor(ref["targets"]), mse, float(ref["alpha"]))
  np.testing.assert_allclose(_np(exp_sim), ref["exp_sim"], rtol=1e-6)
  np.testing.assert_allclose(_np(mse), ref["mse"], rtol=1e-6)
  np.testing.assert_allclose(_np(con), ref["contrastive"], rtol=1e-6)
  np.testing.assert_allclose(_np(loss), ref["loss"], rtol=1e-6)
  loss.backward()
  grads = {k: _np(p.grad) for k, p in model.named_parameters()}
  assert set(grads) == {k[len("grad/"):] for k in ref if k.startswith("grad/")}
  for k, g in grads.items():
    np.testing.assert_allclose(g, ref["grad/" + k], atol=1e-6, err_msg=k)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_state_dict_names_are_the_originals(qkv_bias):
  model = tm.build_torch_model(TINY.replace(qkv_bias=qkv_bias))
  names = {name for _, name, _ in interop.name_map(TINY.depth, qkv_bias)}
  assert set(model.state_dict()) == names


def test_original_state_dict_round_trip_is_bitwise(ref):
  sd = _sd(ref)
  params, _ = interop.params_from_torch_state_dict(sd, heads=4)
  back = interop.params_to_torch_state_dict(params)
  assert set(back) == set(sd)
  for k in sd:
    assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape, k
    assert np.array_equal(back[k].view(np.uint32), sd[k].view(np.uint32)), k


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_torch_model_round_trip_through_csa_jax_is_bitwise(qkv_bias):
  torch.manual_seed(0)
  cfg = TINY.replace(qkv_bias=qkv_bias)
  model = tm.build_torch_model(cfg)
  params, cfg2 = tm.params_from_torch_model(model, heads=cfg.heads)
  assert (cfg2.anchors, cfg2.dim, cfg2.depth, cfg2.mlp_ratio, cfg2.qkv_bias) == (
      cfg.anchors, cfg.dim, cfg.depth, cfg.mlp_ratio, qkv_bias)
  back = tm.torch_state_dict_numpy(tm.torch_model_from_params(params, cfg2))
  for k, v in tm.torch_state_dict_numpy(model).items():
    assert np.array_equal(back[k].view(np.uint32), v.view(np.uint32)), k


def _scores_both(params, cfg, x):
  model = tm.torch_model_from_params(params, cfg).eval()
  with torch.no_grad():
    s_torch = _np(model.forward_feature(torch.tensor(x)))
  return np.asarray(rerank_scores(params, jnp.asarray(x), cfg)), s_torch


def test_converted_csa_jax_model_scores_equal_on_random_weights():
  params = init_params(TINY, jax.random.key(1))
  # Larger than init weights so that the blocks matter, not only the projection.
  params = jax.tree.map(lambda p: p * 5.0, params)
  x = np.random.default_rng(0).random((3, 11, TINY.anchors), np.float32)
  s_jax, s_torch = _scores_both(params, TINY, x)
  assert s_jax.shape == (3, 10)
  np.testing.assert_allclose(s_jax, s_torch, atol=1e-5)
  assert np.std(s_jax) > 1e-3  # not a degenerate all-equal output


def test_converted_csa_jax_model_scores_equal_on_fixture(ref):
  params, cfg = interop.params_from_torch_state_dict(_sd(ref), heads=4)
  s_jax, s_torch = _scores_both(params, cfg, ref["x"])
  np.testing.assert_allclose(s_jax, s_torch, atol=1e-5)
  np.testing.assert_allclose(s_torch, ref["scores"], atol=1e-5)


def test_training_outputs_match_in_eval_mode():
  params = jax.tree.map(lambda p: p * 5.0, init_params(TINY, jax.random.key(2)))
  rng = np.random.default_rng(1)
  x = rng.random((2, 9, TINY.anchors), np.float32)
  y = (rng.random((2, 9)) < 0.4).astype(np.float32)
  y[:, 0] = 1.0
  logits, mse = training_outputs(params, jnp.asarray(x), TINY)
  loss, _ = csa_loss(logits, jnp.asarray(y), mse, 0.2)
  model = tm.torch_model_from_params(params, TINY).eval()
  with torch.no_grad():
    exp_sim, mse_t = model(torch.tensor(x))
    loss_t, _ = tm.original_loss(exp_sim, torch.tensor(y), mse_t, 0.2)
  np.testing.assert_allclose(np.exp(np.asarray(logits)), _np(exp_sim), rtol=1e-5)
  np.testing.assert_allclose(float(mse), float(mse_t), rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(loss_t), rtol=1e-5)


def test_dropouts_act_only_in_training():
  torch.manual_seed(0)
  model = tm.build_torch_model(TINY)  # paper rates: 0.1 everywhere
  x = torch.rand(2, 7, TINY.anchors)
  model.eval()
  with torch.no_grad():
    a, b = model.forward_feature(x), model.forward_feature(x)
  assert torch.equal(a, b)
  model.train()
  with torch.no_grad():
    c = model.forward_feature(x)
  assert not torch.allclose(a, c)
  quiet = tm.build_torch_model(TINY.replace(drop=0.0, attn_drop=0.0, drop_path=0.0))
  quiet.load_state_dict(model.state_dict())
  with torch.no_grad():
    assert torch.allclose(quiet.train().forward_feature(x), a, atol=1e-6)


def test_drop_path_is_per_sample_and_rescaled():
  torch.manual_seed(0)
  dp = tm.DropPath(0.25).train()
  out = dp(torch.ones(4000, 3, 5))
  per_sample = out.reshape(4000, -1)
  # Each sample is all-dropped or all-kept and scaled by 1 / keep.
  assert torch.all(per_sample == per_sample[:, :1])
  np.testing.assert_allclose(per_sample[:, 0].unique().numpy(), [0.0, 1 / 0.75], rtol=1e-6)
  assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
  assert torch.equal(dp.eval()(torch.ones(2, 3)), torch.ones(2, 3))


def test_drop_path_rates_follow_linspace():
  model = tm.build_torch_model(ModelConfig(anchors=8, dim=8, depth=3, heads=2, drop_path=0.2))
  rates = [getattr(b.drop_path, "p", 0.0) for b in model.blocks]
  np.testing.assert_allclose(rates, [0.0, 0.1, 0.2], atol=1e-7)
