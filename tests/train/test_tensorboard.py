"""TensorBoard event files of a training run, read back with TensorBoard's own event reader (the
cases that need it skip when the ``tensorboard`` package is absent)."""

import errno
import math
import os
import shutil
import sys
import threading

import pytest
from hostile_cli import expect_ok, fast_compile_env, train_cli

from csa_jax import configs
from csa_jax.train import telemetry, tensorboard
from csa_jax.train.loop import train

TRAIN_TAGS = {"train/loss", "train/contrastive", "train/mse", "train/grad_norm", "train/lr",
              "train/skipped", "train/samples_per_s", "train/first_step_s"}
TINY_STEPS = [2, 4, 6, 8, 10, 12]  # configs/tiny.py: 12 steps, a record every 2


def _reader():
  return pytest.importorskip("tensorboard.backend.event_processing.event_multiplexer")


def _scalars(logdir) -> dict:
  """{run: {tag: [(step, value), ...]}} as ``tensorboard --logdir logdir`` loads them."""
  mod = _reader()
  mux = mod.EventMultiplexer(size_guidance={"scalars": 0}).AddRunsFromDirectory(str(logdir))
  mux.Reload()
  return {run: {tag: [(e.step, e.value) for e in mux.Scalars(run, tag)]
                for tag in tags["scalars"]}
          for run, tags in mux.Runs().items()}


def _rec(step, loss=0.5, **kw):
  return {"kind": "train", "step": step, "epoch": 0, "loss": loss, "contrastive": 0.4,
          "mse": 0.1, "grad_norm": 2.0, "lr": 0.01, "skipped": 0, "samples_per_s": 100.0, **kw}


# -- tags --------------------------------------------------------------------------------------

def test_tags_of_train_and_eval_records():
  assert tensorboard.scalars(_rec(4, first_step_s=3.5)) == {
      "train/loss": 0.5, "train/contrastive": 0.4, "train/mse": 0.1, "train/grad_norm": 2.0,
      "train/lr": 0.01, "train/skipped": 0.0, "train/samples_per_s": 100.0,
      "train/first_step_s": 3.5}
  ev = {"kind": "eval", "step": 12, "epoch": 2,
        "roxford5k": {"first_round": {"easy": 80.1, "medium": 60.2, "hard": 30.3},
                      "csa": {"easy": 85.0, "medium": 66.0, "hard": 40.0}, "K": 1024},
        "my set!": {"csa": {"medium": 1.0}, "K": 8}}
  assert tensorboard.scalars(ev) == {
      "eval/roxford5k/first_round/easy": 80.1, "eval/roxford5k/first_round/medium": 60.2,
      "eval/roxford5k/first_round/hard": 30.3, "eval/roxford5k/csa/easy": 85.0,
      "eval/roxford5k/csa/medium": 66.0, "eval/roxford5k/csa/hard": 40.0,
      "eval/my_set_/csa/medium": 1.0}  # TensorBoard's tag characters only


# -- the writer --------------------------------------------------------------------------------

def test_records_read_back_at_their_steps_nan_included(tmp_path):
  ev = tensorboard.EventLog(str(tmp_path), start_step=0)
  assert not (tmp_path / "tensorboard").exists()  # nothing until the first record
  ev.write(_rec(2, loss=0.75))
  ev.write(_rec(4, loss=float("nan")))  # every step of the interval skipped
  ev.close()
  got = _scalars(tmp_path)
  assert set(got) == {"tensorboard"} and set(got["tensorboard"]) == TRAIN_TAGS - {
      "train/first_step_s"}
  (s2, v2), (s4, v4) = got["tensorboard"]["train/loss"]
  assert (s2, v2, s4) == (2, 0.75, 4) and math.isnan(v4)


def test_not_process_0_writes_nothing(tmp_path):
  ev = tensorboard.EventLog(str(tmp_path), start_step=0, enabled=False)
  ev.write(_rec(2))
  ev.close()
  assert os.listdir(tmp_path) == []


def test_without_tensorboardx_one_info_line_and_no_files(tmp_path, monkeypatch, shown):
  for name in ("tensorboardX", "tensorboardX.event_file_writer", "tensorboardX.proto.event_pb2",
               "tensorboardX.proto.summary_pb2"):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
  ev = tensorboard.EventLog(str(tmp_path), start_step=0)
  ev.write(_rec(2))
  ev.close()
  lines = shown.getvalue().splitlines()
  assert len(lines) == 1
  assert "event files off: tensorboardX, a csa_jax dependency, is not installed" in lines[0]
  assert "pip install tensorboardX" in lines[0] and " warning: " not in lines[0]
  assert os.listdir(tmp_path) == []


def test_an_unwritable_directory_is_one_warning_and_the_run_goes_on(tmp_path, shown):
  (tmp_path / "tensorboard").write_text("a file where the directory goes")
  ev = tensorboard.EventLog(str(tmp_path), start_step=0)
  ev.write(_rec(2))
  ev.write(_rec(4))
  ev.close()
  lines = shown.getvalue().splitlines()
  assert len(lines) == 1, lines
  assert " warning: tensorboard: " in lines[0] and "event files off from step 2 on" in lines[0]
  assert "(EEXIST)" in lines[0] or "(ENOTDIR)" in lines[0]
  assert sorted(os.listdir(tmp_path)) == ["tensorboard"]


def test_a_full_disk_mid_run_is_one_warning_naming_the_file(tmp_path, shown, monkeypatch):
  ev = tensorboard.EventLog(str(tmp_path), start_step=0)
  ev.write(_rec(2))

  def full(*_):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(ev._writer, "write_event", full)
  ev.write(_rec(4))
  ev.write(_rec(6))  # off: not tried again, no second line
  ev.close()
  lines = shown.getvalue().splitlines()
  assert len(lines) == 1 and "event files off from step 4 on" in lines[0]
  assert ev.path in lines[0] and "[Errno 28] No space left on device (ENOSPC)" in lines[0]
  assert [s for s, _ in _scalars(tmp_path)["tensorboard"]["train/loss"]] == [2]


@pytest.mark.slow
def test_an_interrupted_run_leaves_a_complete_file_and_no_thread(tmp_path, monkeypatch):
  config = configs.load("tiny")
  real, threads = telemetry.Progress.update, set(threading.enumerate())

  def interrupt_at_4(self, step, *a, **kw):
    real(self, step, *a, **kw)
    if step == 4:
      raise KeyboardInterrupt

  monkeypatch.setattr(telemetry.Progress, "update", interrupt_at_4)
  with pytest.raises(KeyboardInterrupt):
    train(config, str(tmp_path / "w"))
  assert not [t for t in set(threading.enumerate()) - threads if "Event" in type(t).__name__]
  got = _scalars(tmp_path / "w")["tensorboard"]
  assert [s for s, _ in got["train/loss"]] == [2, 4]


# -- csa-jax train -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("tb")
  env = fast_compile_env(tmp / "jax_cache")
  w = str(tmp / "w")
  expect_ok(train_cli(tmp, env, w))
  return tmp, env, w


def _metric(workdir, key):
  return [(r["step"], r[key]) for r in telemetry.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if r["kind"] == "train" and key in r]


def test_csa_jax_train_writes_the_scalars_tensorboard_finds(finished):
  _, _, w = finished
  got = _scalars(w)  # `tensorboard --logdir w`
  assert set(got) == {"tensorboard"}
  run = got["tensorboard"]
  assert set(run) == TRAIN_TAGS
  for key in ("loss", "lr", "grad_norm", "samples_per_s"):
    want = _metric(w, key)
    assert [s for s, _ in run[f"train/{key}"]] == TINY_STEPS == [s for s, _ in want]
    assert [v for _, v in run[f"train/{key}"]] == pytest.approx([v for _, v in want], rel=1e-6)


@pytest.mark.slow
def test_a_resumed_run_shows_each_step_once(finished):
  tmp, env, w = finished
  r = str(tmp / "resumed")
  shutil.copytree(w, r)
  # Without its last checkpoint the copy is a run killed after step 12's records were written
  # but before its checkpoint: the resume redoes steps 9 to 12.
  shutil.rmtree(os.path.join(r, "checkpoints", "12"))
  os.remove(os.path.join(r, "checkpoints_digests", "12.json"))
  expect_ok(train_cli(tmp, env, r, "--resume"))
  assert len(os.listdir(os.path.join(r, "tensorboard"))) == 2  # one event file per start
  run = _scalars(r)["tensorboard"]
  for tag in TRAIN_TAGS - {"train/first_step_s"}:
    assert [s for s, _ in run[tag]] == TINY_STEPS, tag  # not 2, ..., 12, 10, 12
  assert [v for _, v in run["train/loss"]] == pytest.approx([v for _, v in _metric(r, "loss")],
                                                            rel=1e-6)
