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


def test_npz_export_replaces_only_its_own_files(tmp_path):
  cfg = ModelConfig(anchors=8, dim=8, depth=1, heads=2)
  params = init_params(cfg, jax.random.key(0))
  foreign = tmp_path / "user.npz"
  np.savez(foreign, a=np.arange(3))  # a user's .npz: never replaced
  text = tmp_path / "notes.npz"
  text.write_text("not a zip")
  link = tmp_path / "link.npz"
  link.symlink_to(foreign)
  for path in (foreign, text, link):
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"expected a new file or an \.npz export csa_jax "
                       r"wrote \(replaced\), found an existing file csa_jax did not write"):
      save_export(path, params, cfg)
    assert path.read_bytes() == before
  ours = tmp_path / "ours.npz"
  save_export(ours, params, cfg)
  save_export(ours, init_params(cfg, jax.random.key(1)), cfg)  # csa_jax's own: replaced
  leaf = lambda p: np.asarray(jax.tree.leaves(p)[0])  # noqa: E731
  np.testing.assert_array_equal(leaf(load_model(ours).params),
                                leaf(init_params(cfg, jax.random.key(1))))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["link.npz", "notes.npz", "ours.npz",
                                                         "user.npz"]
