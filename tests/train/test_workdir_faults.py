"""The workdir lock, failed-start clean-up, run.json's starts and checkpoint fault handling, in
process (the CLI cases are in tests/cli/test_hostile_faults.py)."""

import fcntl
import json
import logging
import os

import jax
import numpy as np
import pytest

from csa_jax import errors, fileio, parallel
from csa_jax.errors import InputError
from csa_jax.train import checkpoint, checks, orbax_errors, telemetry
from csa_jax.train.checkpoint import Checkpointer


def test_a_lock_created_by_a_failed_start_is_removed_and_a_found_one_kept(tmp_path):
  with pytest.raises(RuntimeError):
    with checks.workdir_lock(str(tmp_path)):
      assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
      raise RuntimeError("the start fails")
  assert not (tmp_path / ".lock").exists()
  (tmp_path / ".lock").write_text("12\n")  # an earlier run's
  with pytest.raises(RuntimeError):
    with checks.workdir_lock(str(tmp_path)):
      raise RuntimeError("the start fails")
  assert (tmp_path / ".lock").exists()
  with checks.workdir_lock(str(tmp_path)) as held:  # a start that succeeds keeps its lock file
    assert not held.created
  assert (tmp_path / ".lock").exists()


def test_a_lock_taken_on_a_file_unlinked_meanwhile_is_taken_again(tmp_path, monkeypatch):
  """The unlink/flock race: a failed start unlinks its lock file (while holding it) after this
  start opened it; the lock this start then gets is on a file no longer at the path, so it must
  take the lock again on the file that is."""
  real, locked = fcntl.flock, []

  def flock(fd, op):
    if not locked:
      os.unlink(tmp_path / ".lock")
      (tmp_path / ".lock").write_text("")
    locked.append(os.fstat(fd).st_ino)
    return real(fd, op)

  monkeypatch.setattr(checks.fcntl, "flock", flock)
  with checks.workdir_lock(str(tmp_path)):
    assert len(locked) == 2 and locked[1] == os.stat(tmp_path / ".lock").st_ino
    assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
  target = tmp_path / "precious"
  target.write_text("keep")
  (tmp_path / "w").mkdir()
  os.symlink(target, tmp_path / "w" / ".lock")
  with pytest.raises(InputError, match=r"\.lock: --workdir: .*found a symbolic link"):
    with checks.workdir_lock(str(tmp_path / "w")):
      pass
  assert target.read_text() == "keep" and os.path.islink(tmp_path / "w" / ".lock")


def test_missing_dirs_and_remove_if_empty_remove_only_empty_directories(tmp_path):
  deep = tmp_path / "a" / "b" / "c"
  dirs = fileio.missing_dirs(str(deep))
  assert dirs == [str(deep), str(deep.parent), str(tmp_path / "a")]
  os.makedirs(deep)
  (tmp_path / "a" / "keep.txt").write_text("x")
  fileio.remove_if_empty(dirs)
  assert not (tmp_path / "a" / "b").exists() and (tmp_path / "a" / "keep.txt").exists()


@pytest.mark.parametrize("blank", ["", " \t"])
def test_a_blank_workdir_is_refused(blank):
  with pytest.raises(InputError, match="--workdir: expected a directory path"):
    checks.check_workdir(blank)


def test_run_json_keeps_every_start_and_upgrades_a_single_record(tmp_path, caplog):
  path = str(tmp_path / "run.json")
  old = {"command": "csa-jax train (old)", "started_at_step": 0}
  with open(path, "w") as f:
    json.dump(old, f)
  telemetry.record_start(path, {"command": "second", "started_at_step": 4})
  telemetry.record_start(path, {"command": "third", "started_at_step": 8})
  run = json.load(open(path))
  assert run["starts"] == [old, {"command": "second", "started_at_step": 4},
                           {"command": "third", "started_at_step": 8}]
  assert run["command"] == "third" and run["started_at_step"] == 8
  with open(path, "w") as f:
    f.write("[1, 2]")
  with caplog.at_level(logging.WARNING, logger="csa_jax"):
    telemetry.record_start(path, {"command": "fourth", "started_at_step": 0})
  assert "not a JSON object" in caplog.text
  assert [s["command"] for s in json.load(open(path))["starts"]] == ["fourth"]


@pytest.mark.parametrize("raw,problem", [(b"{}", "empty"), (b"[]", "JSON list"),
                                         (b"\x00garbage", "not JSON"),
                                         (b'{"a": 1}', "SHA-256"), (b'{"a": "ab"}', "SHA-256"),
                                         (b"{\"a\": \"" + b"0" * 64 + b"\"}", None)])
def test_record_problems(raw, problem):
  got = checkpoint._record_problem(raw)
  assert (got is None) if problem is None else (problem in got)


def test_os_errors_are_found_in_tensorstore_messages():
  e = ValueError('OUT_OF_RANGE: Error writing "x/0" in OCDBT database at local file "/w/c/": '
                 'Failed writing: "/w/c/d/abc": Failed to write 12 bytes to file 14: File too '
                 "large [os_error_code='27']")
  assert orbax_errors.os_error_of(e) == (27, "/w/c/d/abc")
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = PermissionError(13, "Permission denied", "/w/c/12.orbax-checkpoint-tmp")
  assert orbax_errors.os_error_of(wrapped) == (13, "/w/c/12.orbax-checkpoint-tmp")
  assert orbax_errors.os_error_of(ValueError("a bug")) is None


def test_a_reason_is_never_a_bound_method_repr():
  class Odd(Exception):
    def __str__(self):
      return "<bound method pybind11_detail_function_record.__str__ of <...>>"
  assert errors.short_reason(Odd("DATA_LOSS: truncated")) == "Odd: DATA_LOSS: truncated"
  assert errors.short_reason(ValueError("")) == "ValueError"
  assert errors.short_reason(OSError("first\nsecond")) == "OSError: first"


def _tiny_state(mesh):
  return parallel.put_replicated({"w": np.arange(6, dtype=np.float32)}, mesh)


def test_a_failed_save_leaves_no_temporary_directory_and_keeps_the_last_step(tmp_path,
                                                                             monkeypatch):
  mesh = parallel.make_mesh()
  d = str(tmp_path / "ck")
  ck = Checkpointer(d, keep=2)
  rng = jax.random.key(0)
  ck.save(1, _tiny_state(mesh), rng, {"step": 1})
  real_save = ck._mgr.save

  def failing_save(step, *a, **kw):  # orbax made its temporary directory, then the disk filled
    os.makedirs(os.path.join(d, f"{step}.orbax-checkpoint-tmp", "state"))
    raise ValueError("Failed writing: \"/x/y\": No space left on device [os_error_code='28']")

  monkeypatch.setattr(ck._mgr, "save", failing_save)
  with pytest.raises(InputError, match=r"ck: checkpoints: expected to save step 2 \(checkpoint "
                     r"1 is kept.*found \[Errno 28\] No space left on device \(ENOSPC\)"):
    ck.save(2, _tiny_state(mesh), rng, {"step": 2})
  monkeypatch.setattr(ck._mgr, "save", real_save)
  ck.close()
  assert sorted(os.listdir(d)) == ["1"]
  state, _, meta = Checkpointer(d).restore(_tiny_state(mesh))
  assert meta["step"] == 1


def test_a_killed_save_s_temporary_directory_is_removed_at_start(tmp_path):
  d = tmp_path / "ck"
  (d / "5.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
  (d / "notes.orbax-checkpoint-tmp").mkdir()  # not orbax's step name: not csa_jax's to remove
  Checkpointer(str(d)).close()
  assert sorted(os.listdir(d)) == ["notes.orbax-checkpoint-tmp"]
