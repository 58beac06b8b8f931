"""``csa-jax bench`` (csa_jax.cli.bench over csa_jax.bench.benchmark) end to end at tiny sizes."""

import importlib.util
import json

import pytest

from csa_jax.bench import benchmark
from csa_jax.bench import contestants as ct
from csa_jax.cli import bench
from csa_jax.core.config import ATTENTIONS

TINY_ARGS = ["--dim", "16", "--depth", "1", "--heads", "2", "--anchors", "8", "--k", "12",
             "--db", "32", "--descriptor-dim", "16", "--batches", "1,2", "--train-batch", "2",
             "--train-k", "8", "--repeats", "2", "--matmul-size", "32", "--no-compile",
             "--dropout", "0"]  # dropout only lengthens compilation; test_torch_model covers it
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch (optional extra) not installed")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench") / "bench.json"
  return bench.main(TINY_ARGS + ["--out", str(out)]), json.loads(out.read_text())


@needs_torch
@pytest.mark.slow
def test_tiny_bench_end_to_end(tiny_run):
  rc, res = tiny_run
  assert rc == 0
  assert res["schema"] == benchmark.SCHEMA and res["command"].startswith("csa-jax bench --dim 16")
  for key in ("date", "cpu_model", "cpu_count", "jax_version", "jax_backend", "torch_version",
              "loadavg_start", "loadavg_end"):
    assert key in res["machine"], key
  par = res["parity"]
  assert par["checked"] and par["rerank_max_abs_diff"] <= 1e-4
  assert par["train_loss_max_abs_diff"] <= 1e-4
  assert res["matmul_peak"]["device_peak_flops"] > 0
  assert res["config"]["csa_jax"] == ct.JAX and res["config"]["model"]["attention"] == "auto"
  # One attention: the plain name, and what "auto" resolves to on this backend.
  assert list(res["config"]["attention"]) == [ct.JAX]
  att = res["config"]["attention"][ct.JAX]
  assert att["asked"] == "auto" and {att["rerank"], att["train"]} <= set(ATTENTIONS) - {"auto"}
  assert list(par["per_impl"]) == [ct.JAX]
  for part, batches in (("rerank", [1, 2]), ("train", [2])):
    rows = res[part]
    assert {(r["batch"], r["impl"]) for r in rows} == {
        (b, i) for b in batches for i in (ct.JAX, ct.EAGER)}
    for r in rows:
      assert "error" not in r, r
      assert len(r["steady_s"]) == 2 and r["items_per_s"] > 0 and r["first_call_s"] > 0
      assert r["achieved_flops"] == pytest.approx(r["flops_per_item"] * r["items_per_s"])
      assert r["frac_of_matmul_peak"] > 0
      assert "peak_mem_bytes" in r and "peak_mem_method" in r
      if r["peak_mem_bytes"] is not None:  # None without /proc/self/clear_refs
        assert r["mem_per_item_bytes"] == pytest.approx(r["peak_mem_bytes"] / r["batch"])
      if r["impl"] == ct.EAGER:
        assert r["speedup_vs_torch_eager"] == pytest.approx(1.0)
  for part, batch in (("rerank", 1), ("train", 2)):
    w = res["warm_start"][part]
    assert w["batch"] == batch and "error" not in w, w
    assert w["warm_over_cold"] == pytest.approx(w["warm"]["first_call_s"]
                                                / w["cold"]["first_call_s"])
    assert w["cache_files_after_warm"] == w["cache_files_after_cold"]


@needs_torch
@pytest.mark.slow
def test_tiny_bench_prints_a_table(tiny_run):
  _, res = tiny_run
  table = bench.format_table(res)
  assert "parity:" in table and "OK" in table
  assert table.count("MiB/item") == 2  # one header per part
  rows = [line.split() for line in table.splitlines() if line.startswith(("rerank ", "train "))
          and "first call cold" not in line]
  for r in rows:  # the per-item memory column: the peak over the batch, to 0.1 MiB
    if r[-3] != "-":
      assert float(r[-2]) == pytest.approx(float(r[-3]) / int(r[1]), abs=0.6)
    # The attention read from the compiled program: chunked ("auto" on CPU) never makes N x N.
    assert r[-1] == ("blocked" if r[2] == ct.JAX else "-")
  assert "warm start" in table and table.count("first call cold") == 2
  assert sorted((r[0], r[1], r[2]) for r in rows) == sorted(
      (part, b, impl) for part, b in (("rerank", "1"), ("rerank", "2"), ("train", "2"))
      for impl in (ct.JAX, ct.EAGER))


def test_bench_runs_without_torch(tmp_path, capsys):
  out = tmp_path / "jax_only.json"
  assert bench.main(TINY_ARGS + ["--no-torch", "--no-train", "--no-warm-start", "--out",
                                 str(out)]) == 0
  res = json.loads(out.read_text())
  assert res["parity"] == {"checked": False} and res["train"] == []
  assert "warm_start" not in res
  assert [(r["batch"], r["impl"]) for r in res["rerank"]] == [(1, ct.JAX), (2, ct.JAX)]
  assert "not checked" in capsys.readouterr().out


def test_bad_sizes_are_rejected_before_any_work(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    bench.parse_args(["--batches", "1,x"])
  assert e.value.code == 2 and "positive integers" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    bench.parse_args(["--repeats", "0"])
  from csa_jax.errors import InputError
  with pytest.raises(InputError, match="--db"):
    bench.main(TINY_ARGS + ["--db", "4", "--out", str(tmp_path / "x.json")])
  with pytest.raises(InputError, match="divisible"):
    bench.main(TINY_ARGS + ["--heads", "3", "--out", str(tmp_path / "x.json")])
  assert not (tmp_path / "x.json").exists()


def test_flags_become_settings():
  s = bench.parse_args(["--no-torch", "--no-compile", "--no-train", "-K", "64", "-L", "16",
                        "--batches", "2,4", "--out", "x.json"])
  assert (s.torch, s.compile, s.train, s.k, s.anchors, s.batches, s.out) == (
      False, False, False, 64, 16, [2, 4], "x.json")
  defaults = bench.parse_args([])
  assert defaults == benchmark.Settings()  # the command line's defaults are the library's


def test_the_entry_is_importable_from_the_package():
  import csa_jax.bench  # noqa: PLC0415
  assert csa_jax.bench.run_benchmark is benchmark.run_benchmark
  assert csa_jax.bench.Settings is benchmark.Settings
