"""``csa-jax bench --attention``: one csa_jax contestant per attention implementation."""

import importlib.util
import json

import pytest

from csa_jax.bench import arena
from csa_jax.bench import contestants as ct
from csa_jax.cli import bench

HAS_TORCH = importlib.util.find_spec("torch") is not None
TINY_ARGS = ["--dim", "16", "--depth", "1", "--heads", "2", "--anchors", "8", "--k", "12",
             "--db", "32", "--descriptor-dim", "16", "--batches", "1,2", "--no-train",
             "--train-k", "8", "--repeats", "2", "--matmul-size", "32", "--no-compile"]


def test_attention_flag_values():
  assert bench.parse_args([]).attention == ["auto"]
  assert bench.parse_args(["--attention", "chunked"]).attention == ["chunked"]
  assert bench.parse_args(["--attention", "xla, chunked,cudnn"]).attention == [
      "xla", "chunked", "cudnn"]


@pytest.mark.parametrize("value", ["flash", "xla,xla", "", ",", "xla,bogus"])
def test_bad_attention_values_exit_2(value, capsys):
  with pytest.raises(SystemExit) as e:
    bench.parse_args(["--attention", value])
  assert e.value.code == 2 and "--attention" in capsys.readouterr().err


def test_contestant_names():
  assert arena.jax_names(["xla"]) == {ct.JAX: "xla"}  # the name of earlier results
  assert arena.jax_names(["chunked", "xla"]) == {"csa_jax[chunked]": "chunked",
                                                  "csa_jax[xla]": "xla"}


@pytest.mark.slow
def test_variants_race_side_by_side_in_one_run(tmp_path, capsys):
  out = tmp_path / "b.json"
  argv = TINY_ARGS + ["--attention", "xla,chunked", "--out", str(out)]
  assert bench.main(argv + ([] if HAS_TORCH else ["--no-torch"])) == 0
  res = json.loads(out.read_text())
  variants = ["csa_jax[xla]", "csa_jax[chunked]"]
  impls = variants + ([ct.EAGER] if HAS_TORCH else [])
  # Interleaved in the same races: every batch has every contestant, in the order given.
  for b in (1, 2):
    assert [r["impl"] for r in res["rerank"] if r["batch"] == b] == impls
  assert all("error" not in r and r["items_per_s"] > 0 for r in res["rerank"])
  cfg = res["config"]
  assert cfg["csa_jax"] == "csa_jax[xla]" and cfg["model"]["attention"] == "xla"
  assert list(cfg["attention"]) == variants
  assert [a["asked"] for a in cfg["attention"].values()] == ["xla", "chunked"]
  assert [a["rerank"] for a in cfg["attention"].values()] == ["xla", "chunked"]
  if HAS_TORCH:  # each variant checked against PyTorch before the race
    assert list(res["parity"]["per_impl"]) == variants
    assert all(p["rerank_max_abs_diff"] <= 1e-4 for p in res["parity"]["per_impl"].values())
  table = capsys.readouterr().out
  assert "csa_jax = csa_jax[xla]" in table
  assert sum(line.split()[2] == "csa_jax[chunked]" for line in table.splitlines()
             if line.startswith("rerank ")) == 2
