"""The attention heads of a loaded model: recorded counts win, an assumed count is said aloud.

The fixture ``csa_tiny_original.pth`` is a 4-head model whose checkpoint does not record that
(as the original training's do not): loaded with the default 12 heads it gives other scores.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import jax
import numpy as np
import pytest

from csa_jax import InputError, ModelConfig, init_params, load_model, load_torch_checkpoint
from csa_jax import rerank_scores, save_export
from csa_jax.fileio import save_npz
from csa_jax.interop.state_dict import params_to_torch_state_dict
from pickle_craft import crafted_model

PTH = "csa_tiny_original.pth"


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _scores(params, cfg, data_dir):
  ref = np.load(data_dir / "csa_tiny_reference.npz")
  return np.asarray(rerank_scores(params, ref["x"], cfg)), ref["scores"]


def test_unrecorded_heads_are_assumed_with_one_warning(data_dir, caplog):
  caplog.set_level(logging.INFO)
  params, cfg = load_model(data_dir / PTH)
  assert cfg.heads == 12
  (w,) = _warnings(caplog)
  assert w == (f"{data_dir / PTH}: the checkpoint does not record its attention heads; assuming "
               "12 (the paper model's): pass --heads (heads= in Python) if it has another count")
  got, want = _scores(params, cfg, data_dir)
  assert not np.allclose(got, want, atol=1e-5)  # why the warning matters: other scores


def test_explicit_heads_load_silently(data_dir, caplog):
  params, cfg = load_torch_checkpoint(data_dir / PTH, heads=4)
  assert cfg.heads == 4 and not _warnings(caplog)
  got, want = _scores(params, cfg, data_dir)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("after", [{"heads": 4}, {"model_config": {"heads": 4, "dim": 48}},
                                   {"args": {"num_heads": 4}}])
def test_recorded_heads_are_used(tmp_path, data_dir, caplog, after):
  path = crafted_model(tmp_path / "m.pth", after=after)
  params, cfg = load_model(path)
  assert cfg.heads == 4 and not _warnings(caplog)
  got, want = _scores(params, cfg, data_dir)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert load_model(path, heads=4)[1].heads == 4
  with pytest.raises(InputError, match=r"m\.pth: heads: expected 4 \(recorded in the checkpoint\)"
                     r", found --heads 12"):
    load_model(path, heads=12)


@pytest.mark.parametrize("bad", [0, "4", 2.0, True])
def test_malformed_recorded_heads_are_refused(tmp_path, bad):
  path = crafted_model(tmp_path / "m.pth", after={"heads": bad})
  with pytest.raises(InputError, match=r"m\.pth: heads: expected a positive int"):
    load_model(path)


def test_exports_record_heads_and_load_with_them(tmp_path, caplog):
  cfg = ModelConfig(anchors=8, dim=16, depth=1, heads=4)
  params = init_params(cfg, jax.random.key(0))
  save_export(tmp_path / "m.npz", params, cfg)
  with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
    assert json.loads(str(z["model_config"]))["heads"] == 4
  assert load_model(tmp_path / "m.npz")[1].heads == 4 and not _warnings(caplog)
  with pytest.raises(InputError, match=r"heads: expected 4 \(recorded in the export\), found "
                     r"--heads 2"):
    load_model(tmp_path / "m.npz", heads=2)


def test_export_without_heads_warns_or_takes_the_callers(tmp_path, caplog):
  cfg = ModelConfig(anchors=8, dim=24, depth=1, heads=4)  # 24: 12 heads divide it too
  d = dataclasses.asdict(cfg)
  del d["heads"]  # an export written by hand, or by an older tool
  arrays = {f"param/{k}": v for k, v in
            params_to_torch_state_dict(init_params(cfg, jax.random.key(0))).items()}
  save_npz(tmp_path / "m.npz", model_config=np.array(json.dumps(d)), **arrays)
  assert load_model(tmp_path / "m.npz", heads=4)[1].heads == 4 and not _warnings(caplog)
  assert load_model(tmp_path / "m.npz")[1].heads == 12
  (w,) = _warnings(caplog)
  assert "the export does not record its attention heads; assuming 12" in w
