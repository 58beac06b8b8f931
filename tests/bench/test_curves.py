"""csa_jax.bench.curves (``csa-jax bench --curves DIR``): the sweeps' JSON, the PNGs, the flags."""

import importlib.util
import json
import pathlib

import pytest

from csa_jax.bench import contestants as ct
from csa_jax.bench import curves
from csa_jax.cli import bench

HAS_TORCH = importlib.util.find_spec("torch") is not None
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_ARGS = ["--dim", "16", "--depth", "1", "--heads", "2", "--anchors", "8", "--k", "8",
             "--db", "32", "--descriptor-dim", "16", "--batches", "1", "--no-train",
             "--train-k", "8", "--repeats", "1", "--matmul-size", "32", "--no-compile",
             "--dropout", "0"]
CURVE_ARGS = ["--curve-ks", "8,4", "--curve-batches", "2,1", "--curve-train-batches", "2"]


@pytest.fixture(scope="module")
def curve_run(tmp_path_factory):
  d = tmp_path_factory.mktemp("curves")
  rc = bench.main(TINY_ARGS + CURVE_ARGS + ["--curves", str(d / "c"), "--out", str(d / "b.json")])
  return rc, d / "c", json.loads((d / "b.json").read_text())


@pytest.mark.slow
def test_curves_json_has_every_sweep_on_an_ascending_axis(curve_run):
  rc, out, res = curve_run
  assert rc == 0
  doc = json.loads((out / curves.JSON_NAME).read_text())
  assert doc["schema"] == curves.SCHEMA and doc["repeats"] == 1
  assert "--curves" in doc["command"] and doc["config"]["model"]["dim"] == 16
  impls = [ct.JAX] + ([ct.EAGER] if HAS_TORCH else [])
  axes = {"rerank_vs_k": ("K", [4, 8], {"batch": 1}), "rerank_vs_batch": ("batch", [1, 2],
          {"K": 8}), "train_vs_batch": ("batch", [2], {"K": 8})}
  assert set(doc["curves"]) == set(curves.SWEEPS) == set(axes)
  for name, (x_name, xs, fixed) in axes.items():
    c = doc["curves"][name]
    assert (c["x_name"], c["x"], c["fixed"]) == (x_name, xs, fixed), name
    assert list(c["series"]) == impls  # --no-compile is not needed: curves race eager only
    for impl in impls:
      for field in curves.SERIES_FIELDS:
        vals = c["series"][impl][field]
        assert len(vals) == len(xs), (name, impl, field)
        if field != "mem_per_item_bytes":  # may be unknown (no /proc/self/clear_refs)
          assert all(v is not None and v > 0 for v in vals), (name, impl, field, vals)
    assert len(c["rows"]) == len(xs) * len(impls)
    for r in c["rows"]:
      assert r["s_per_item"] == pytest.approx(1 / r["items_per_s"])
      if r["peak_mem_bytes"] is not None:
        assert r["mem_per_item_bytes"] == pytest.approx(r["peak_mem_bytes"] / r["batch"])
  # The K sweep's cost model grows with K; the bench results point at the folder.
  rk = doc["curves"]["rerank_vs_k"]["rows"]
  assert [r["flops_per_item"] for r in rk if r["impl"] == ct.JAX] == sorted(
      r["flops_per_item"] for r in rk if r["impl"] == ct.JAX)
  assert res["curves"]["files"] == [curves.JSON_NAME] + [f"{n}.png" for n in curves.SWEEPS]


@pytest.mark.slow
def test_curves_pngs_are_png_files(curve_run):
  _, out, _ = curve_run
  for name in curves.SWEEPS:
    data = (out / f"{name}.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, name
  # Written atomically: no temporary files left beside them.
  assert sorted(p.name for p in out.iterdir()) == sorted(
      [curves.JSON_NAME] + [f"{n}.png" for n in curves.SWEEPS])


def test_a_failed_point_is_a_gap_not_a_crash(tmp_path):
  xs = [1, 2]
  row = {"impl": ct.JAX, "batch": 1, "s_per_item": 0.1, "items_per_s": 10.0,
         "achieved_flops": 1e9, "mem_per_item_bytes": None}
  curve = curves._curve("batch", xs, [row, {"impl": ct.JAX, "batch": 2, "error": "oom"}],
                        {"K": 8})
  assert curve["series"][ct.JAX]["items_per_s"] == [10.0, None]
  doc = {"config": {"model": {"anchors": 8, "dim": 16, "depth": 1, "heads": 2,
                              "dtype": "float32"}},
         "machine": {"jax_backend": "cpu", "jax_device": "cpu"}, "repeats": 1,
         "matmul_peak_flops": 2e9, "curves": {n: curve for n in curves.SWEEPS}}
  paths = curves.write(str(tmp_path / "gap"), doc)
  assert json.loads(pathlib.Path(paths[0]).read_text())["curves"]["rerank_vs_k"]["x"] == xs
  assert all(pathlib.Path(p).read_bytes()[:8] == PNG_MAGIC for p in paths[1:])


def test_curve_sizes_defaults_are_ascending_and_smaller_on_cpu():
  cpu = curves.CurveSizes(ks=[8, 4, 8]).resolved(accel=False)
  assert cpu.ks == [4, 8] and cpu.k_batch == 1
  assert cpu.batches == [1, 2, 4, 8] and cpu.train_batches == [1, 2, 4]
  acc = curves.CurveSizes().resolved(accel=True)
  assert acc.ks == [128, 256, 512, 1024, 2048] and max(acc.train_batches) > max(cpu.batches)


@pytest.mark.parametrize("flags", [["--curve-ks", "4,x"], ["--curve-batches", "0"],
                                   ["--curve-train-batches", ""], ["--curve-k-batch", "-1"],
                                   ["--curves"]])
def test_bad_curve_flags_exit_2(flags, capsys):
  with pytest.raises(SystemExit) as e:
    bench.parse_args(flags)
  assert e.value.code == 2 and "error" in capsys.readouterr().err


def test_curve_flags_become_settings_and_the_db_must_hold_the_largest_k(tmp_path):
  s = bench.parse_args(["--curves", "d", "--curve-ks", "4,8", "--curve-k-batch", "3",
                        "--curve-batches", "1,2", "--curve-train-batches", "2"])
  assert (s.curves, s.curve_ks, s.curve_k_batch, s.curve_batches, s.curve_train_batches) == (
      "d", [4, 8], 3, [1, 2], [2])
  from csa_jax.errors import InputError
  with pytest.raises(InputError, match="--db"):
    bench.main(TINY_ARGS + ["--curves", str(tmp_path / "c"), "--curve-ks", "64",
                            "--out", str(tmp_path / "x.json")])
  assert not (tmp_path / "x.json").exists() and not (tmp_path / "c").exists()
