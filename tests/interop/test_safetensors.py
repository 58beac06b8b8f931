"""Trained models as ``.safetensors``: exact round trips, the original checkpoint through it and
back, files the ``safetensors`` package writes and reads, and what is refused."""

from __future__ import annotations

import json
import logging
import os
import re

import jax
import numpy as np
import pytest

from csa_jax import InputError, ModelConfig, init_params, load_model, save_export
from csa_jax.formats.safetensors_file import load_safetensors, save_safetensors
from csa_jax.formats.torch_file import read_torch_file
from csa_jax.interop.convert import convert_model, save_pth
from csa_jax.interop.safetensors_export import CONFIG_KEY
from csa_jax.interop.state_dict import params_to_torch_state_dict

PTH = "csa_tiny_original.pth"
CFG = ModelConfig(anchors=12, dim=16, depth=2, heads=2, qkv_bias=False, temperature=0.5,
                  drop=0.0)


def _params(cfg=CFG, seed=0):
  return init_params(cfg, jax.random.key(seed))


def _assert_params_bitwise(a, b) -> None:
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype == np.float32 and x.shape == y.shape, path
    assert x.tobytes() == y.tobytes(), path


def _one_line(e: pytest.ExceptionInfo, path, field: str) -> str:
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"{path}: {field}: expected "), msg
  return msg


def test_round_trip_is_bitwise_and_keeps_the_config(tmp_path):
  params = _params()
  save_export(tmp_path / "m.safetensors", params, CFG)
  model = load_model(tmp_path / "m.safetensors")
  assert model.cfg == CFG
  _assert_params_bitwise(params, model.params)
  save_export(tmp_path / "m.npz", params, CFG)  # the other export holds the same
  _assert_params_bitwise(load_model(tmp_path / "m.npz").params, model.params)


def test_tensor_names_are_the_original_state_dict(tmp_path):
  params = _params()
  save_export(tmp_path / "m.safetensors", params, CFG)
  tensors, meta = load_safetensors(tmp_path / "m.safetensors")
  sd = params_to_torch_state_dict(params)
  assert set(tensors) == set(sd) and "blocks.1.attn.qkv.weight" in tensors
  for k, v in sd.items():
    assert tensors[k].dtype == np.float32 and tensors[k].tobytes() == v.tobytes(), k
  assert meta["format"] == "pt"
  assert json.loads(meta[CONFIG_KEY])["heads"] == 2


def test_the_safetensors_package_reads_our_exports(tmp_path):
  sn = pytest.importorskip("safetensors.numpy")
  safetensors = pytest.importorskip("safetensors")
  params = _params()
  save_export(tmp_path / "m.safetensors", params, CFG)
  sd = params_to_torch_state_dict(params)
  got = sn.load_file(str(tmp_path / "m.safetensors"))
  assert set(got) == set(sd)
  for k, v in sd.items():
    assert got[k].tobytes() == v.tobytes(), k
  with safetensors.safe_open(str(tmp_path / "m.safetensors"), framework="np") as f:
    assert json.loads(f.metadata()[CONFIG_KEY])["temperature"] == 0.5


def test_the_original_model_loads_our_export_with_torch(tmp_path, data_dir):
  pytest.importorskip("torch")
  st = pytest.importorskip("safetensors.torch")
  from csa_jax.interop.torch_reference import build_torch_model  # noqa: PLC0415  (needs torch)
  model = load_model(data_dir / PTH, heads=4)
  save_export(tmp_path / "m.safetensors", model.params, model.cfg)
  ref = build_torch_model(model.cfg)
  ref.load_state_dict(st.load_file(str(tmp_path / "m.safetensors")), strict=True)
  want = read_torch_file(data_dir / PTH)["state_dict"]
  for k, v in ref.state_dict().items():
    assert v.numpy().tobytes() == want[k].tobytes(), k


def test_a_state_dict_saved_by_safetensors_torch_loads_like_the_pth(tmp_path, data_dir, caplog):
  torch = pytest.importorskip("torch")
  st = pytest.importorskip("safetensors.torch")
  sd = {k: torch.from_numpy(v.copy()) for k, v in read_torch_file(data_dir / PTH)["state_dict"]
        .items()}
  st.save_file(sd, str(tmp_path / "theirs.safetensors"))
  want = load_model(data_dir / PTH, heads=4)
  got = load_model(tmp_path / "theirs.safetensors", heads=4)
  assert got.cfg == want.cfg
  _assert_params_bitwise(want.params, got.params)
  caplog.set_level(logging.WARNING)
  assert load_model(tmp_path / "theirs.safetensors").cfg.heads == 12  # as for the .pth
  assert [r.getMessage() for r in caplog.records] == [
      f"{tmp_path / 'theirs.safetensors'}: the checkpoint does not record its attention heads; "
      "assuming 12 (the paper model's): pass --heads (heads= in Python) if it has another count"]
  st.save_file({k: v.bfloat16() for k, v in sd.items()}, str(tmp_path / "bf16.safetensors"))
  bf = load_model(tmp_path / "bf16.safetensors", heads=4)
  for k, v in params_to_torch_state_dict(bf.params).items():
    assert v.tobytes() == sd[k].bfloat16().float().numpy().tobytes(), k  # exact widening


def _foreign(tmp_path, data_dir, name="f.safetensors", metadata=None, edit=None):
  """The fixture's state_dict written by our writer with other metadata: a foreign file."""
  sd = dict(read_torch_file(data_dir / PTH)["state_dict"])
  if edit:
    edit(sd)
  save_safetensors(tmp_path / name, sd, metadata)
  return tmp_path / name


@pytest.mark.parametrize("key", ["heads", "num_heads"])
def test_heads_recorded_in_foreign_metadata_are_used(tmp_path, data_dir, caplog, key):
  path = _foreign(tmp_path, data_dir, metadata={"format": "pt", key: "4"})
  caplog.set_level(logging.WARNING)
  assert load_model(path).cfg.heads == 4 and not caplog.records
  with pytest.raises(InputError) as e:
    load_model(path, heads=2)
  assert "expected 4 (recorded in the checkpoint), found --heads 2" in _one_line(e, path, "heads")


@pytest.mark.parametrize("value", ["four", "0", "-4", "4.0", "", "٤"])
def test_bad_foreign_heads_are_refused(tmp_path, data_dir, value):
  path = _foreign(tmp_path, data_dir, metadata={"heads": value})
  with pytest.raises(InputError) as e:
    load_model(path)
  _one_line(e, path, "__metadata__.heads")


def test_a_module_prefix_is_stripped(tmp_path, data_dir):
  path = _foreign(tmp_path, data_dir, edit=lambda sd: sd.update(
      {f"module.{k}": sd.pop(k) for k in list(sd)}))
  _assert_params_bitwise(load_model(data_dir / PTH, heads=4).params,
                         load_model(path, heads=4).params)


# The original checkpoint, through .safetensors and back.

def test_original_pth_through_safetensors_loads_equal(tmp_path, data_dir):
  want = load_model(data_dir / PTH, heads=4)
  got = convert_model(data_dir / PTH, tmp_path / "m.safetensors", heads=4)
  _assert_params_bitwise(want.params, got.params)
  back = load_model(tmp_path / "m.safetensors")  # heads now recorded
  assert back.cfg == want.cfg
  _assert_params_bitwise(want.params, back.params)
  ref = np.load(data_dir / "csa_tiny_reference.npz")
  for k, v in load_safetensors(tmp_path / "m.safetensors")[0].items():
    assert v.tobytes() == ref[f"param/{k}"].tobytes(), k


def test_pth_to_safetensors_to_pth_is_equal(tmp_path, data_dir):
  pytest.importorskip("torch")
  convert_model(data_dir / PTH, tmp_path / "m.safetensors", heads=4)
  convert_model(tmp_path / "m.safetensors", tmp_path / "back.pth")
  orig, back = read_torch_file(data_dir / PTH), read_torch_file(tmp_path / "back.pth")
  assert list(back["state_dict"]) == list(orig["state_dict"])  # the original's order, too
  for k, v in orig["state_dict"].items():
    w = back["state_dict"][k]
    assert w.dtype == v.dtype and w.shape == v.shape and w.tobytes() == v.tobytes(), k
  assert back["heads"] == 4  # what the original format can carry of the config
  assert load_model(tmp_path / "back.pth").cfg == load_model(data_dir / PTH, heads=4).cfg


def test_save_pth_writes_the_original_layout(tmp_path):
  torch = pytest.importorskip("torch")
  params = _params()
  save_pth(tmp_path / "m.pth", params, CFG, epoch=3)
  obj = torch.load(tmp_path / "m.pth", weights_only=True)
  assert list(obj) == ["epoch", "state_dict", "heads"] and obj["epoch"] == 3
  for k, v in params_to_torch_state_dict(params).items():
    assert obj["state_dict"][k].numpy().tobytes() == v.tobytes(), k
  with pytest.raises(InputError) as e:
    save_pth(tmp_path / "m.pth", params, CFG)
  _one_line(e, tmp_path / "m.pth", "path")


# Refused: non-finite parameters, hostile files, files csa_jax did not write.

@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_params_are_never_written(tmp_path, bad):
  params = jax.tree.map(np.array, _params())
  params["blocks_1"]["mlp"]["fc2"]["kernel"][3, 1] = bad
  with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.weight holds NaN/inf"):
    save_export(tmp_path / "m.safetensors", params, CFG)
  assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("dtype, value", [(np.float32, np.nan), (np.float16, np.inf),
                                          (np.float64, 1e300)])  # 1e300: inf as float32
def test_non_finite_values_are_refused_on_load(tmp_path, data_dir, dtype, value):
  def edit(sd):
    w = sd["blocks.0.attn.proj.weight"].astype(dtype)
    w[0, 0] = value
    sd["blocks.0.attn.proj.weight"] = w
  path = _foreign(tmp_path, data_dir, edit=edit)
  with pytest.raises(InputError) as e:
    load_model(path, heads=4)
  assert "expected finite parameters, found 1 NaN/inf" in _one_line(
      e, path, "blocks.0.attn.proj.weight")


def _export_bytes(tmp_path) -> bytes:
  save_export(tmp_path / "ok.safetensors", _params(), CFG)
  return (tmp_path / "ok.safetensors").read_bytes()


def _with_config(raw: bytes, text: str) -> bytes:
  """The export with its recorded config replaced (header re-encoded, data unchanged)."""
  hlen = int.from_bytes(raw[:8], "little")
  head = json.loads(raw[8:8 + hlen])
  head["__metadata__"][CONFIG_KEY] = text
  new = json.dumps(head).encode()
  return len(new).to_bytes(8, "little") + new + raw[8 + hlen:]


def test_hostile_exports_are_one_line_errors(tmp_path):
  raw = _export_bytes(tmp_path)
  cfg = json.loads(json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
                   [CONFIG_KEY])
  field = f"__metadata__.{CONFIG_KEY}"
  cases = [
      ("truncated", raw[:-5], r"blocks\.1\.mlp\.fc2\.bias"),  # the last tensor in the buffer
      ("huge_length", (1 << 62).to_bytes(8, "little") + raw[8:], "header length"),
      ("bad_config_json", _with_config(raw, "{heads: 2"), field),
      ("config_not_object", _with_config(raw, "[2]"), field),
      ("unknown_config_key", _with_config(raw, json.dumps({**cfg, "evil": 1})), field + ".evil"),
      ("bad_heads", _with_config(raw, json.dumps({**cfg, "heads": "2"})), field + ".heads"),
      ("lying_dim", _with_config(raw, json.dumps({**cfg, "dim": 32})), field + ".dim"),
      ("bad_temperature", _with_config(raw, json.dumps({**cfg, "temperature": "hot"})),
       "model_config"),
  ]
  for name, data, fld in cases:
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(data)
    with pytest.raises(InputError) as e:
      load_model(path)
    msg = str(e.value)
    assert "\n" not in msg and re.match(rf"{re.escape(str(path))}: ({fld})[^:]*: expected ",
                                        msg), (name, msg)


def test_recorded_heads_win_over_a_contradicting_argument(tmp_path):
  save_export(tmp_path / "m.safetensors", _params(), CFG)
  with pytest.raises(InputError) as e:
    load_model(tmp_path / "m.safetensors", heads=4)
  assert "expected 2 (recorded in the export), found --heads 4" in _one_line(
      e, tmp_path / "m.safetensors", "heads")


def test_only_csa_jax_files_are_replaced(tmp_path):
  params = _params()
  notes = tmp_path / "notes.safetensors"
  notes.write_text("not a model: someone's file")
  foreign = tmp_path / "foreign.safetensors"
  save_safetensors(foreign, {"x": np.zeros(2, np.float32)}, {"format": "pt"})
  before = foreign.read_bytes()
  for path in (notes, foreign):
    with pytest.raises(InputError) as e:
      save_export(path, params, CFG)
    assert "found an existing file csa_jax did not write" in _one_line(e, path, "path")
  assert notes.read_text() == "not a model: someone's file" and foreign.read_bytes() == before
  (tmp_path / "d.safetensors").mkdir()
  with pytest.raises(InputError) as e:
    save_export(tmp_path / "d.safetensors", params, CFG)
  _one_line(e, tmp_path / "d.safetensors", "path")
  ours = tmp_path / "m.safetensors"
  save_export(ours, params, CFG)
  save_export(ours, _params(seed=1), CFG)  # a csa_jax export is replaced
  _assert_params_bitwise(_params(seed=1), load_model(ours).params)
  assert sorted(os.listdir(tmp_path)) == ["d.safetensors", "foreign.safetensors",
                                          "m.safetensors", "notes.safetensors"]


def test_convert_refuses_before_reading(tmp_path, data_dir):
  (tmp_path / "x.pth").write_bytes(b"someone's")
  for dst, field in [(tmp_path / "m.onnx", "dst"), (tmp_path / "x.pth", "dst")]:
    with pytest.raises(InputError) as e:
      convert_model(tmp_path / "missing.pth", dst)  # dst is refused first: src is never read
    _one_line(e, dst, field)
  save_export(tmp_path / "m.safetensors", _params(), CFG)
  with pytest.raises(InputError) as e:
    convert_model(tmp_path / "m.safetensors", tmp_path / "m.safetensors")
  assert "the same file as src" in _one_line(e, tmp_path / "m.safetensors", "dst")
  assert (tmp_path / "x.pth").read_bytes() == b"someone's"
