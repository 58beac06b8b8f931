"""tools/bench_epoch.py: one epoch through ``csa-jax train`` on its generated data, timed.

The tiny mode runs the real CLI end to end (data written in the training layout, planted
neighbour lists found in the cache, one epoch, the checkpoint, the export); the helpers that
plant the lists and read the metrics are checked directly.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "bench_epoch.py"


def _tool():
  spec = importlib.util.spec_from_file_location("bench_epoch", TOOL)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_tiny_epoch_end_to_end(tmp_path):
  out = tmp_path / "epoch.json"
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device: the tool is under test, not sharding
  env.update(JAX_PLATFORMS="cpu", CSA_JAX_CACHE_DIR="off")
  p = subprocess.run([sys.executable, str(TOOL), "--tiny", "--out", str(out), "--dir",
                      str(tmp_path / "scratch"), "--keep"], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
  assert p.returncode == 0, p.stderr[-3000:]
  assert p.stdout.startswith("bench_epoch: ok:") and len(p.stdout.splitlines()) == 1
  r = json.loads(out.read_text())
  assert r["status"] == "ok" and r["returncode"] == 0
  spe = r["samples"] // r["batch"]
  assert r["steps_per_epoch"] == spe > 1
  assert r["samples_trained"] == r["epoch_samples"] == spe * r["batch"]
  assert r["steps_done"] == spe and r["timed_steps"] == spe - 1
  for key in ("wall_s", "generate_s", "startup_s", "first_step_s", "steps_s", "epoch_s",
              "finish_s", "samples_per_s"):
    assert r[key] > 0, key
  assert r["startup_s"] < r["wall_s"] and r["first_step_s"] < r["wall_s"]
  assert r["neighbors_cache_hit"]  # the planted lists are keyed as csa-jax train looks them up
  assert r["skipped_steps"] == 0
  run = pathlib.Path(r["dir"]) / "run"
  assert r["checkpoint_exists"] and r["checkpoint_steps"] == [spe]
  assert (run / "checkpoints" / str(spe)).is_dir()
  assert r["export_exists"] and (run / "state_dict.npz").is_file()
  assert r["devices"]["backend"] == "cpu"


def test_planted_neighbors_are_self_first_distinct_and_near():
  be = _tool()
  nb = be.planted_neighbors(50, 9)
  assert nb.shape == (50, 9) and nb.dtype == np.int32
  assert np.array_equal(nb[:, 0], np.arange(50))
  assert all(len(set(row)) == 9 for row in nb.tolist())
  assert nb.min() >= 0 and nb.max() < 50
  assert nb[0].tolist() == [0, 1, 49, 2, 48, 3, 47, 4, 46]


def test_step_times_read_the_throughput_intervals():
  be = _tool()
  # Steps 2..4 at 8 samples/s (batch 4: 0.5 s each), then 5..8 at 16 samples/s (0.25 s each).
  recs = [{"step": 4, "samples_per_s": 8.0, "first_step_s": 3.0},
          {"step": 8, "samples_per_s": 16.0}]
  t = be.step_times(recs, batch=4)
  assert t["first_step_s"] == 3.0
  assert t["timed_steps"] == 7
  assert abs(t["steps_s"] - 2.5) < 1e-12
  assert abs(t["samples_per_s"] - 7 * 4 / 2.5) < 1e-12
  assert be.step_times([], batch=4)["steps_s"] is None
