"""``csa-jax convert``: every weights format to every other, bit for bit, and what it refuses."""

import jax
import numpy as np
import pytest

from csa_jax import ModelConfig, init_params, load_model, save_export
from csa_jax.cli import main as cli
from csa_jax.interop import convert as convert_lib

CFG = ModelConfig(anchors=12, dim=16, depth=2, heads=2, qkv_bias=False, temperature=0.5)


def run(argv, capsys):
  rc = cli.main(["convert", *map(str, argv)])
  out, err = capsys.readouterr()
  return rc, out, err


def error_line(rc, err) -> str:
  assert rc == 2 and "Traceback" not in err, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("csa-jax convert: error: "), err
  return lines[0]


def leaves(model):
  return [np.asarray(x) for x in jax.tree.leaves(model.params)]


@pytest.fixture()
def source(tmp_path):
  path = tmp_path / "m.npz"
  save_export(path, init_params(CFG, jax.random.key(0)), CFG)
  return path


def test_npz_to_safetensors_to_pth_and_back_is_bitwise(source, tmp_path, capsys):
  pytest.importorskip("torch")
  chain = [source, tmp_path / "m.safetensors", tmp_path / "m.pth", tmp_path / "back.npz"]
  for src, dst in zip(chain, chain[1:]):
    args = [src, dst] + (["--heads", CFG.heads] if src.suffix == ".pth" else [])
    rc, out, err = run(args, capsys)
    assert rc == 0, err
    assert f"wrote {dst} (" in err and "anchors 12, dim 16, depth 2, heads 2" in err
  want = leaves(load_model(source))
  for path in chain[1:]:
    got = leaves(load_model(path, heads=CFG.heads if path.suffix == ".pth" else None))
    assert [g.tobytes() for g in got] == [w.tobytes() for w in want], path
  assert load_model(chain[1]).cfg == CFG  # the exports keep the whole config
  assert load_model(chain[-1]).cfg.heads == CFG.heads  # the .pth kept the head count


@pytest.mark.parametrize("bad", ["suffix", "same_file", "foreign_npz", "existing_pth",
                                 "missing_src", "heads"])
def test_refusals_leave_every_file_as_it_was(source, tmp_path, capsys, bad):
  user = tmp_path / "user.npz"
  np.savez(user, a=np.arange(3))
  (tmp_path / "old.pth").write_bytes(b"someone's checkpoint")
  args, want = {
      "suffix": ([source, tmp_path / "m.bin"], "m.bin: dst: expected a path ending in .pth"),
      "same_file": ([source, source], "m.npz: dst: expected an output path that is none of "
                    "the inputs, found the same file as src"),
      "foreign_npz": ([source, user], "user.npz: dst: expected a new file or an .npz export"),
      "existing_pth": ([source, tmp_path / "old.pth"], "old.pth: dst: expected a new .pth"),
      "missing_src": ([tmp_path / "none.npz", tmp_path / "x.safetensors"], "none.npz: file:"),
      "heads": ([source, tmp_path / "x.npz", "--heads", "0"], "--heads: expected"),
  }[bad]
  before = {p: p.read_bytes() for p in tmp_path.iterdir()}
  if bad == "existing_pth":
    pytest.importorskip("torch")
  line = error_line(*run(args, capsys)[::2])
  assert want in line, line
  assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_pth_without_torch_names_the_extra(source, tmp_path, capsys, monkeypatch):
  find_spec = convert_lib.importlib.util.find_spec
  monkeypatch.setattr(convert_lib.importlib.util, "find_spec",
                      lambda name, *a: None if name == "torch" else find_spec(name, *a))
  line = error_line(*run([source, tmp_path / "m.pth"], capsys)[::2])
  assert "m.pth: dst: expected a .npz or .safetensors path, or the torch extra for .pth" in line
  assert "pip install 'csa_jax[torch]'" in line
  assert not (tmp_path / "m.pth").exists()
