"""jax.profiler traces on request: ``csa-jax --profile DIR <command>`` and training's
``log.profile_steps``; each leaves a trace TensorBoard's profile plugin and Perfetto open, or one
error line and nothing half-written."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest
from hostile_cli import expect_ok, fast_compile_env, train_cli

from csa_jax import configs, profiling
from csa_jax.cli import main as cli
from csa_jax.errors import InputError
from csa_jax.train.loop import train


def _traces(log_dir) -> list[str]:
  """The xplane files of every session under ``log_dir`` (what the profile plugin lists)."""
  return sorted(glob.glob(os.path.join(str(log_dir), "plugins", "profile", "*", "*.xplane.pb")))


def _perfetto(log_dir) -> list[str]:
  return sorted(glob.glob(os.path.join(str(log_dir), "plugins", "profile", "*",
                                       profiling.PERFETTO_NAME)))


@pytest.mark.parametrize("text,want", [("", None), (None, None), ("  ", None), ("3", (3, 3)),
                                       ("10:13", (10, 13)), (" 2:2 ", (2, 2))])
def test_step_ranges(text, want):
  assert profiling.parse_step_range(text) == want


@pytest.mark.parametrize("text", ["0:3", "5:4", "a:b", "1:2:3", "3:", ":3", "-1"])
def test_a_bad_step_range_is_one_line_naming_the_key(text):
  with pytest.raises(InputError, match=r"^config: log.profile_steps: expected A:B, the first "
                     r"and last step to trace \(1 <= A <= B\), or '' for none, found "):
    profiling.parse_step_range(text)


def test_a_trace_holds_the_device_work_for_tensorboard_and_perfetto(tmp_path):
  with profiling.trace(tmp_path / "p") as t:
    x = jnp.ones((64, 64))
    jax.block_until_ready(x @ x)
  assert len(_traces(tmp_path / "p")) == 1 and len(_perfetto(tmp_path / "p")) == 1
  assert os.path.dirname(_traces(tmp_path / "p")[0]) == t.session_dir
  assert profiling.running() is None


def test_an_unwritable_trace_directory_is_refused_before_any_work(tmp_path):
  (tmp_path / "f").write_text("a file")
  ran = []
  with pytest.raises(InputError, match=r"/f/a/b: --profile: expected a writable directory for "
                     r"the profiler trace, found \[Errno 20\] Not a directory \(ENOTDIR\)"):
    with profiling.trace(tmp_path / "f" / "a" / "b"):
      ran.append(1)
  assert not ran and profiling.running() is None
  assert sorted(os.listdir(tmp_path)) == ["f"]


def test_a_failed_write_leaves_no_session_folder(tmp_path, monkeypatch):
  def failing_stop():
    real_stop()  # the session is written, then (say) Perfetto's copy fails on a full disk
    raise OSError(28, "No space left on device")

  real_stop = jax.profiler.stop_trace
  monkeypatch.setattr(jax.profiler, "stop_trace", failing_stop)
  with pytest.raises(InputError, match=r"--profile: expected a writable directory for the "
                     r"profiler trace, found \[Errno 28\] No space left on device \(ENOSPC\)"):
    with profiling.trace(tmp_path / "p"):
      jax.block_until_ready(jnp.ones(3) + 1)
  assert os.listdir(tmp_path) == []  # neither the session nor the directories made for it


# -- csa-jax --profile DIR <command> -----------------------------------------------------------

def test_a_profiled_smoke_run_leaves_a_trace(tmp_path, capsys):
  assert cli.main(["--quiet", "--profile", str(tmp_path / "p"), "smoke", "--queries", "2", "--db",
                   "64", "--dim", "32", "--K", "16", "--L", "8"]) == 0
  assert "new_top   (2, 16)" in capsys.readouterr().out  # the command ran as usual
  assert len(_traces(tmp_path / "p")) == 1 and len(_perfetto(tmp_path / "p")) == 1


def test_profile_flag_errors_are_one_line_exit_2(tmp_path, capsys):
  (tmp_path / "f").write_text("a file")
  assert cli.main(["--profile", str(tmp_path / "f" / "d"), "smoke", "--queries", "2"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("csa-jax smoke: error: ")
  assert "--profile: expected a writable directory" in err[0] and "(ENOTDIR)" in err[0]
  assert cli.main(["--profile"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["csa-jax: error: command line: --profile: expected a directory for the trace "
                 "(--profile DIR), found none"]
  assert cli.main(["--profile", str(tmp_path / "p"), "train", "--config", "tiny", "--workdir",
                   str(tmp_path / "w"), "--distributed"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--profile: expected a single-process command" in err[0]
  assert sorted(os.listdir(tmp_path)) == ["f"]


def test_the_help_shows_the_flag(capsys):
  assert cli.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert "[--profile DIR] <command>" in out and "--profile DIR" in out.split("options")[1]


# -- training: log.profile_steps ---------------------------------------------------------------

@pytest.mark.slow
def test_a_profiled_step_range_of_a_tiny_training_leaves_a_trace(tmp_path):
  w = tmp_path / "w"
  res = train_cli(tmp_path, fast_compile_env(tmp_path / "jax_cache"), w,
                  "--config.log.profile_steps=3:4")
  expect_ok(res)
  assert len(_traces(w / "profile")) == 1 and len(_perfetto(w / "profile")) == 1
  assert "profile: tracing steps 3 to 4" in res.stderr
  assert "profile: trace of steps 3 to 4 written" in res.stderr


def test_an_unwritable_profile_dir_refuses_the_start_and_leaves_nothing(tmp_path):
  (tmp_path / "f").write_text("a file")
  config = configs.load("tiny", [("log.profile_steps", "3:4"),
                                 ("log.profile_dir", str(tmp_path / "f" / "p"))])
  with pytest.raises(InputError, match=r"/f/p: log.profile_dir: expected a writable directory"):
    train(config, str(tmp_path / "w"))
  assert sorted(os.listdir(tmp_path)) == ["f"]  # not even the new workdir


def test_a_bad_step_range_is_refused_before_the_workdir_is_made(tmp_path):
  with pytest.raises(InputError, match=r"config: log.profile_steps: expected A:B"):
    train(configs.load("tiny", [("log.profile_steps", "4:3")]), str(tmp_path / "w"))
  assert os.listdir(tmp_path) == []


def test_a_range_already_done_or_past_the_end_or_inside_profile_traces_nothing(tmp_path, shown):
  r = profiling.StepRange((2, 3), str(tmp_path / "a"), start_step=4, total=12)
  assert r.trace is None
  r = profiling.StepRange((13, 14), str(tmp_path / "b"), start_step=0, total=12)
  assert r.trace is None
  r = profiling.StepRange((2, 3), str(tmp_path / "c"), start_step=0, total=12, enabled=False)
  assert r.trace is None
  with profiling.trace(tmp_path / "whole"):
    r = profiling.StepRange((2, 3), str(tmp_path / "d"), start_step=0, total=12)
    assert r.trace is None
  lines = shown.getvalue().splitlines()
  assert "before step 5, where this run resumes; nothing traced" in lines[0]
  assert "warning: profile: log.profile_steps 13:14: past the run's last step 12" in lines[1]
  assert "ignored, the whole command is traced (--profile" in lines[2]
  assert sorted(os.listdir(tmp_path)) == ["whole"]


def test_a_run_stopped_inside_the_range_still_writes_its_trace(tmp_path, shown):
  r = profiling.StepRange((2, 5), str(tmp_path / "p"), start_step=0, total=12)
  r.before(1)
  assert not profiling.running() and not _traces(tmp_path / "p")  # not yet
  r.before(2)
  jax.block_until_ready(jnp.ones(3) * 2)
  r.after(2, None)  # not the last step of the range: still tracing
  r.close()  # an exception or an interrupt at step 3
  assert len(_traces(tmp_path / "p")) == 1
  assert "trace of steps from 2 on written" in shown.getvalue()
  r = profiling.StepRange((2, 5), str(tmp_path / "q"), start_step=0, total=12)
  r.close()  # stopped before the range: the directories made for it are gone
  assert not (tmp_path / "q").exists()


def test_a_trace_already_running_is_one_warning_and_training_goes_on(tmp_path, shown):
  r = profiling.StepRange((1, 2), str(tmp_path / "p"), start_step=0, total=12)
  jax.profiler.start_trace(str(tmp_path / "user"))  # a library user's own trace
  try:
    r.before(1)
    r.after(1, None)
    r.after(2, None)
  finally:
    jax.profiler.stop_trace()
  r.close()
  lines = shown.getvalue().splitlines()
  assert len(lines) == 1 and " warning: profile: " in lines[0], lines
  assert "expected no other profiler trace running" in lines[0]
  assert not (tmp_path / "p").exists() and _traces(tmp_path / "user")
