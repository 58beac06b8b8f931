"""csa_jax exports and the one model loader."""

import jax
import numpy as np
import pytest

from csa_jax import InputError
from csa_jax import ModelConfig
from csa_jax import init_params
from csa_jax import load_model
from csa_jax import save_export


def test_export_round_trip(tmp_path):
  cfg = ModelConfig(anchors=12, dim=16, depth=2, heads=2, qkv_bias=False, temperature=0.5)
  params = init_params(cfg, jax.random.key(0))
  save_export(tmp_path / "m.npz", params, cfg)
  for where in (tmp_path / "m.npz", tmp_path):
    if where == tmp_path:
      (tmp_path / "m.npz").rename(tmp_path / "state_dict.npz")
    p2, cfg2 = load_model(where)
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p2)):
      np.testing.assert_array_equal(np.asarray(a), b)
  with np.load(tmp_path / "state_dict.npz", allow_pickle=False) as z:
    assert "param/topk_proj.weight" in z.files  # original names, readable without csa_jax


def test_loads_original_pth(data_dir):
  params, cfg = load_model(data_dir / "csa_tiny_original.pth", heads=4)
  assert (cfg.anchors, cfg.dim, cfg.heads) == (32, 48, 4)


def test_loader_errors(tmp_path):
  with pytest.raises(InputError, match=r"found no such file"):
    load_model(tmp_path / "missing.npz")
  with pytest.raises(InputError, match=r"state_dict\.npz: expected a finished training workdir"):
    load_model(tmp_path)
  np.savez(tmp_path / "x.npz", a=np.zeros(3))
  with pytest.raises(InputError, match=r"x\.npz: model_config: expected .* found no such entry"):
    load_model(tmp_path / "x.npz")
  cfg = ModelConfig(anchors=8, dim=8, depth=1, heads=2)
  save_export(tmp_path / "m.npz", init_params(cfg, jax.random.key(0)), cfg)
  with pytest.raises(InputError, match=r"heads: expected 2 \(recorded in the export\), found"):
    load_model(tmp_path / "m.npz", heads=4)
