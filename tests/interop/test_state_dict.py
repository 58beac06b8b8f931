"""State-dict conversion in both directions and its error messages."""

import jax
import numpy as np
import pytest

from csa_jax import (InputError, ModelConfig, init_params, params_from_torch_state_dict,
                     params_to_torch_state_dict)


@pytest.fixture(scope="module")
def ref_sd(data_dir):
  z = np.load(data_dir / "csa_tiny_reference.npz")
  return {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}


def test_round_trip_is_exact(ref_sd):
  params, _ = params_from_torch_state_dict(ref_sd, heads=4)
  back = params_to_torch_state_dict(params)
  assert sorted(back) == sorted(ref_sd)
  for k in ref_sd:
    assert back[k].dtype == np.float32 and back[k].shape == ref_sd[k].shape
    np.testing.assert_array_equal(back[k], ref_sd[k])


def test_kernels_are_transposed(ref_sd):
  params, _ = params_from_torch_state_dict(ref_sd, heads=4)
  np.testing.assert_array_equal(params["topk_proj"]["kernel"], ref_sd["topk_proj.weight"].T)
  np.testing.assert_array_equal(params["blocks_1"]["mlp"]["fc2"]["kernel"],
                                ref_sd["blocks.1.mlp.fc2.weight"].T)


def test_params_tree_matches_fresh_init(ref_sd):
  params, cfg = params_from_torch_state_dict(ref_sd, heads=4)
  fresh = jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))  # shapes, no compute
  assert jax.tree.structure(params) == jax.tree.structure(fresh)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fresh)):
    assert a.shape == b.shape


def test_no_qkv_bias_and_other_shapes_inferred():
  cfg = ModelConfig(anchors=20, dim=24, depth=3, heads=3, mlp_ratio=2, qkv_bias=False)
  sd = params_to_torch_state_dict(jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(1)))
  assert "blocks.0.attn.qkv.bias" not in sd
  _, got = params_from_torch_state_dict(sd, heads=3)
  assert got == cfg


def test_dataparallel_prefix_is_stripped(ref_sd):
  params, cfg = params_from_torch_state_dict({"module." + k: v for k, v in ref_sd.items()},
                                             heads=4)
  assert cfg.depth == 2 and "topk_proj" in params


@pytest.mark.parametrize("mutate,match", [
    (lambda sd: sd.pop("blocks.1.attn.proj.bias"), r"blocks\.1\.attn\.proj\.bias: expected shape"
     r" \(48,\), found no such key"),
    (lambda sd: sd.__setitem__("blocks.0.mlp.fc2.weight", np.zeros((48, 100), np.float32)),
     r"blocks\.0\.mlp\.fc2\.weight: expected shape \(48, 192\), found \(48, 100\)"),
    (lambda sd: sd.__setitem__("head.weight", np.zeros(3, np.float32)),
     r"head\.weight: expected only CSA re-ranker keys"),
    (lambda sd: sd.__setitem__("topk_proj.bias", np.zeros(48, np.int64)),
     r"topk_proj\.bias: expected a floating-point array, found int64"),
    (lambda sd: sd.pop("topk_proj.weight"), r"topk_proj\.weight: expected a \(D, L\) array"),
])
def test_bad_state_dicts_name_the_key(ref_sd, mutate, match):
  sd = dict(ref_sd)
  mutate(sd)
  with pytest.raises(InputError, match=match) as e:
    params_from_torch_state_dict(sd, heads=4, source="ckpt.pth")
  assert str(e.value).startswith("ckpt.pth: ") and "\n" not in str(e.value)


def test_heads_must_divide_dim(ref_sd):
  with pytest.raises(InputError, match="heads: expected a divisor of D=48, found 5"):
    params_from_torch_state_dict(ref_sd, heads=5)
