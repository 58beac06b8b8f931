"""End-to-end training through ``csa-jax train`` in subprocesses.

One uninterrupted run of configs/tiny.py (8 fake CPU devices) is the reference for: a run
SIGKILLed mid-way and resumed (bitwise equal), and a 2-process ``jax.distributed`` run over gloo
on 127.0.0.1 (equal to 1e-5). The subprocesses compile with XLA's backend optimisation off (the
same program, 3x faster to compile) and the single-process runs share a compilation cache.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from csa_jax import configs
from csa_jax.interop import export
from csa_jax.train import telemetry
from csa_jax.errors import InputError
from csa_jax.train.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")
# 96 samples / 16 = 6 steps per epoch: 18 steps. Checkpoints are every 3 steps in the run that
# is killed, only at the end elsewhere (the frequency changes nothing computed or logged).
OVERRIDES = ["--config.train.epochs=3", "--config.log.every_steps=3"]
ONLY_FINAL = "--config.checkpoint.every_steps=1000"
TIMEOUT = 300


def _env(tmp, devices=8, cache=True):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                      "--xla_backend_optimization_level=0")
  env["JAX_PLATFORMS"] = "cpu"
  if cache:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tmp, "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "csa_jax.cli.main", "train", "--config", TINY, *OVERRIDES,
          "--workdir", workdir, "--no-progress", *extra]


def _params(workdir):
  with np.load(os.path.join(workdir, export.EXPORT_NAME)) as z:
    return {k: z[k] for k in z.files if k.startswith("param/")}


def _train_records(workdir):
  recs = [r for r in telemetry.read_jsonl(os.path.join(workdir, telemetry.METRICS_NAME))
          if r["kind"] == "train"]
  keys = ("step", "loss", "contrastive", "mse", "grad_norm", "lr", "skipped")
  return [{k: r[k] for k in keys} for r in recs]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("train"))
  workdir = os.path.join(tmp, "reference")
  p = subprocess.run(_cmd(workdir, ONLY_FINAL), env=_env(tmp), capture_output=True, text=True,
                     timeout=TIMEOUT)
  assert p.returncode == 0, p.stderr[-3000:]
  return tmp, workdir


def test_a_run_writes_the_model_metrics_and_plot(reference):
  _, workdir = reference
  params, cfg = export.load_model(workdir)
  assert cfg.anchors == 8 and cfg.dim == 16
  recs = [r for r in telemetry.read_jsonl(os.path.join(workdir, telemetry.METRICS_NAME))]
  assert [r["step"] for r in recs] == list(range(3, 19, 3))
  for r in recs:
    assert {"loss", "contrastive", "mse", "grad_norm", "lr", "skipped", "samples_per_s"} <= set(r)
    assert np.isfinite(r["loss"]) and r["skipped"] == 0 and r["grad_norm"] > 0
  assert recs[-1]["loss"] < recs[0]["loss"]  # it learns
  with open(os.path.join(workdir, telemetry.PLOT_NAME), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["train"]["epochs"] == 3
  with open(os.path.join(workdir, "run.json")) as f:
    run = json.load(f)
  assert run["command"].startswith("csa-jax train") and run["seed"] == 0
  assert run["config"]["train"]["epochs"] == 3 and run["started_at_step"] == 0
  assert run["versions"]["jax"] and run["devices"]
  sd = _params(workdir)
  assert "param/topk_proj.weight" in sd and sd["param/topk_proj.weight"].shape == (16, 8)
  torch = pytest.importorskip("torch")
  pth = torch.load(os.path.join(workdir, "state_dict.pth"), weights_only=True)
  assert pth["epoch"] == 3 and pth["heads"] == saved["model"]["heads"]  # load_model reads it
  for k, v in pth["state_dict"].items():
    np.testing.assert_array_equal(v.numpy(), sd[f"param/{k}"])


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(reference):
  tmp, ref = reference
  workdir = os.path.join(tmp, "killed")
  ckdir = os.path.join(workdir, "checkpoints")
  every = "--config.checkpoint.every_steps=3"
  proc = subprocess.Popen(_cmd(workdir, every), env=_env(tmp), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + TIMEOUT
  try:
    while time.time() < deadline and proc.poll() is None:
      steps = [int(n) for n in os.listdir(ckdir) if n.isdigit()] if os.path.isdir(ckdir) else []
      if steps:
        break
      time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  assert not os.path.exists(os.path.join(workdir, export.EXPORT_NAME))
  p = subprocess.run(_cmd(workdir, every, "--resume"), env=_env(tmp), capture_output=True,
                     text=True, timeout=TIMEOUT)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "resumed at step" in p.stderr
  want, got = _params(ref), _params(workdir)
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # The metrics file reads as one run: every interval once, the same values.
  assert _train_records(workdir) == _train_records(ref)


def test_resume_refuses_a_changed_recipe_and_a_fresh_run_refuses_a_used_workdir(reference):
  _, workdir = reference
  base = [tuple(o[len("--config."):].split("=", 1)) for o in OVERRIDES]
  config = configs.load(TINY, base + [("train.base_lr", "0.2")])
  with pytest.raises(InputError, match=r"train\.base_lr: expected the resumed run's value 0\.1"):
    train(config, workdir, resume=True, progress=False)
  with pytest.raises(InputError, match="expected a fresh workdir .or --resume., found a run at "
                                       "step 18"):
    train(configs.load(TINY, base), workdir, progress=False)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_distributed_run_equals_one_process(reference):
  tmp, ref = reference
  workdir = os.path.join(tmp, "distributed")
  addr = f"127.0.0.1:{_free_port()}"
  spellings = (("--coordinator-address", "--num-processes", "--process-id"),  # process 0
               ("--coordinator_address", "--num_processes", "--process_id"))  # the old aliases
  procs = [subprocess.Popen(
      _cmd(workdir, ONLY_FINAL, spellings[i][0], addr, spellings[i][1], "2", spellings[i][2],
           str(i)),
      env=_env(tmp, devices=4, cache=False), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=TIMEOUT)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
  assert "on 8 devices (2 processes)" in outs[0]
  want, got = _params(ref), _params(workdir)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], atol=1e-5, err_msg=k)
