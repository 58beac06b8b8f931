"""csa_jax.bench: the side-by-side benchmark, end to end at tiny sizes, and its fairness checks."""

import importlib.util
import json

import jax
import numpy as np
import pytest

from csa_jax import bench
from csa_jax.config import ModelConfig

TINY_ARGS = ["--dim", "16", "--depth", "1", "--heads", "2", "--anchors", "8", "--k", "12",
             "--db", "32", "--descriptor-dim", "16", "--batches", "1,2", "--train-batch", "2",
             "--train-k", "8", "--repeats", "2", "--matmul-size", "32", "--no-compile",
             "--dropout", "0"]  # dropout only lengthens compilation; test_torch_model covers it
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch (optional extra) not installed")
TINY = ModelConfig(anchors=8, dim=16, depth=1, heads=2, drop=0.0, attn_drop=0.0, drop_path=0.0)


def _data(n_db=32, c=16, q=2, t=12, seed=0):
  rng = np.random.default_rng(seed)
  db = bench._unit(rng.standard_normal((n_db, c), np.float32))
  qs = bench._unit(rng.standard_normal((q, c), np.float32))
  top = np.argsort(-(qs @ db.T), axis=1)[:, :t].astype(np.int32)
  return qs, db, top


def test_flops_match_a_layer_by_layer_count():
  cfg = ModelConfig()
  n, l, d = 1025, 512, 768
  # Every matmul of the model, as (rows, contraction, cols) of one sample.
  mats = [(n, l, d)] + cfg.depth * [(n, d, 3 * d), (n, d, n), (n, n, d), (n, d, d),
                                    (n, d, 4 * d), (n, 4 * d, d)]
  expected = sum(2 * a * b * c for a, b, c in mats)
  assert bench.forward_flops(cfg, n) == expected
  assert bench.forward_flops(cfg, n, align=True) == expected + 2 * n * d * l
  assert 35e9 < bench.forward_flops(cfg, n) < 37e9  # SPEC section 9: "about 36 GFLOP"
  assert bench.rerank_flops(cfg, 1024, 2048) == expected + 2 * n * l * 2048
  assert bench.train_flops(cfg, 512) == 3 * bench.forward_flops(cfg, 512, align=True)


def test_check_close_fails_on_difference_and_nan():
  assert bench.check_close([1.0, 2.0], [1.0, 2.00001], 1e-4, "x") < 1e-4
  with pytest.raises(bench.ParityError, match="differ"):
    bench.check_close([1.0, 2.0], [1.0, 2.1], 1e-4, "x")
  with pytest.raises(bench.ParityError):
    bench.check_close([np.nan], [np.nan], 1e-4, "x")
  with pytest.raises(bench.ParityError, match="shapes"):
    bench.check_close([1.0], [1.0, 1.0], 1e-4, "x")


def test_race_keeps_going_when_one_contestant_fails():
  calls = []

  def ok():
    calls.append(1)

  def oom():
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")

  out = bench.race({"a": ok, "b": oom}, repeats=3, memory=lambda n, f: (None, "none"),
                   label="t")
  assert out["b"]["error"].startswith("out of memory")
  assert len(out["a"]["steady_s"]) == 3 and len(calls) == 1 + 3


@needs_torch
def test_torch_affinity_equals_csa_jax_affinity():
  import torch
  from csa_jax.affinity import rerank_affinity
  q, db, top = _data()
  for l in (5, 13):  # anchors within and beyond the K + 1 tokens
    a_jax = np.asarray(rerank_affinity(q, db, top, 12, l))
    a_torch = bench.torch_affinity(torch.tensor(q), torch.tensor(db),
                                   torch.tensor(top).long(), 12, l).numpy()
    np.testing.assert_allclose(a_jax, a_torch, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench") / "bench.json"
  return bench.main(TINY_ARGS + ["--out", str(out)]), json.loads(out.read_text())


@needs_torch
def test_tiny_bench_end_to_end(tiny_run, capsys):
  rc, res = tiny_run
  assert rc == 0
  assert res["schema"] == bench.SCHEMA and res["command"].startswith("csa-jax bench --dim 16")
  for key in ("date", "cpu_model", "cpu_count", "jax_version", "jax_backend", "torch_version",
              "loadavg_start", "loadavg_end"):
    assert key in res["machine"], key
  par = res["parity"]
  assert par["checked"] and par["rerank_max_abs_diff"] <= 1e-4
  assert par["train_loss_max_abs_diff"] <= 1e-4
  assert res["matmul_peak"]["device_peak_flops"] > 0
  for part, batches in (("rerank", [1, 2]), ("train", [2])):
    rows = res[part]
    assert {(r["batch"], r["impl"]) for r in rows} == {
        (b, i) for b in batches for i in (bench.JAX, bench.EAGER)}
    for r in rows:
      assert "error" not in r, r
      assert len(r["steady_s"]) == 2 and r["items_per_s"] > 0 and r["first_call_s"] > 0
      assert r["achieved_flops"] == pytest.approx(r["flops_per_item"] * r["items_per_s"])
      assert r["frac_of_matmul_peak"] > 0
      assert "peak_mem_bytes" in r and "peak_mem_method" in r
      if r["impl"] == bench.EAGER:
        assert r["speedup_vs_torch_eager"] == pytest.approx(1.0)


@needs_torch
def test_tiny_bench_prints_a_table(tiny_run):
  rc, res = tiny_run
  table = bench.format_table(res)
  assert "parity:" in table and "OK" in table
  rows = [line.split() for line in table.splitlines() if line.startswith(("rerank ", "train "))]
  assert sorted((r[0], r[1], r[2]) for r in rows) == sorted(
      (part, b, impl) for part, b in (("rerank", "1"), ("rerank", "2"), ("train", "2"))
      for impl in (bench.JAX, bench.EAGER))


def test_bad_sizes_are_rejected_before_any_work(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    bench.parse_args(["--batches", "1,x"])
  assert e.value.code == 2 and "positive integers" in capsys.readouterr().err
  from csa_jax.errors import InputError
  with pytest.raises(InputError, match="--db"):
    bench.main(TINY_ARGS + ["--db", "4", "--out", str(tmp_path / "x.json")])
  assert not (tmp_path / "x.json").exists()


@needs_torch
def test_parity_check_fails_when_weights_differ():
  from csa_jax import torch_model as tm
  params = bench.init_jitted(TINY, jax.random.key(0))
  q, db, top = _data()
  same = tm.torch_model_from_params(params, TINY)
  assert bench.rerank_parity(params, TINY, same, q, db, top, 12, 1e-4) <= 1e-4
  other = jax.tree.map(lambda p: p * 3.0, params)  # a different model, same shapes
  with pytest.raises(bench.ParityError, match="re-rank scores"):
    bench.rerank_parity(params, TINY, tm.torch_model_from_params(other, TINY), q, db, top, 12,
                        1e-4)
  aff = np.random.default_rng(0).random((2, 8, TINY.anchors), np.float32)
  y = np.zeros((2, 8), np.float32)
  y[:, :3] = 1.0
  assert bench.loss_parity(params, TINY, same, aff, y, 0.2, 1e-4) <= 1e-4
  with pytest.raises(bench.ParityError, match="training loss"):
    bench.loss_parity(params, TINY, tm.torch_model_from_params(other, TINY), aff, y, 0.2, 1e-4)
