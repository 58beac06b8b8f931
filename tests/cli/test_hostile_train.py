"""``csa-jax train`` and model loading against hostile and clumsy inputs, one subprocess per case.

Covers: non-finite models (never trained into, exported or loaded), damaged checkpoints (verified,
then the previous kept one), resumes with a changed config, config values and files that used to
end in tracebacks, the workdir lock, stale temporary files and file modes.
"""

import fcntl
import glob
import json
import os
import shutil

import numpy as np
import pytest

from hostile_cli import (expect_input_error, expect_ok, fast_compile_env, finished_tiny_run,
                         leftover_temp_files, run_cli, train_cli)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RSFM = os.path.join(ROOT, "configs", "rsfm120k.py")

# Each case boots csa-jax in a subprocess: the slow tier (see tests/conftest.py).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return fast_compile_env(tmp_path_factory.mktemp("jax_cache"))


train = train_cli


def _params(workdir):
  with np.load(os.path.join(workdir, "state_dict.npz")) as z:
    return {k: z[k] for k in z.files if k.startswith("param/")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, env):
  return finished_tiny_run(tmp_path_factory.mktemp("finished"), env)


def _resumable_copy(finished, tmp_path):
  """The finished run without its outputs: a resume redoes steps 9-12 from checkpoint 8."""
  w = str(tmp_path / "copy")
  shutil.copytree(finished, w)
  for f in ("state_dict.npz", "state_dict.pth"):
    if os.path.exists(os.path.join(w, f)):
      os.remove(os.path.join(w, f))
  return w


def _flip_bytes(step_dir):
  """Flips 8 bytes in the middle of every array data file of a checkpoint.

  Every file, not one: which file holds which array (and which bytes a restore reads) is orbax's
  layout, and a flip in bytes no restore reads would damage nothing.
  """
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(f) and "/ocdbt.process_0/d/" in f]
  assert files, step_dir
  for f in files:
    b = bytearray(open(f, "rb").read())
    for i in range(8):
      b[len(b) // 2 + i] ^= 0xFF
    open(f, "wb").write(bytes(b))


# -- group 4: non-finite models ---------------------------------------------------------------

@pytest.mark.parametrize("override,needle", [
    ("train.base_lr=nan", "train.base_lr"),
    ("train.base_lr=inf", "train.base_lr"),
    ("train.warmup_lr=-1", "train.warmup_lr"),
    ("model.temperature=0", "temperature"),
    ("model.temperature=nan", "temperature"),
])
def test_non_finite_or_degenerate_hyper_parameters_are_refused_up_front(tmp_path, env, override,
                                                                        needle):
  w = tmp_path / "w"
  expect_input_error(train(tmp_path, env, w, f"--config.{override}"), needle)
  assert not w.exists() or not os.listdir(w), "nothing may be written before the checks"


def test_a_diverging_run_exports_nothing(tmp_path, env):
  # 1e38 is finite, so it passes the config checks; the updates overflow, the guard skips them
  # and the run must not end in an exported model.
  w = tmp_path / "w"
  line = expect_input_error(train(tmp_path, env, w, "--config.train.base_lr=1e38"),
                            "nothing exported")
  assert "skipped" in line
  assert not (w / "state_dict.npz").exists() and not (w / "state_dict.pth").exists()
  assert leftover_temp_files(w) == []


def _tiny_eval_inputs(tmp_path):
  rng = np.random.default_rng(0)
  db = rng.normal(size=(40, 8)).astype(np.float32)
  q = rng.normal(size=(2, 8)).astype(np.float32)
  db /= np.linalg.norm(db, axis=1, keepdims=True)
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  np.savez(tmp_path / "feats.npz", db=db, query=q)
  gnd = {"gnd": [{"easy": [0, 1], "hard": [2], "junk": []}, {"easy": [3], "hard": [], "junk": [4]}]}
  (tmp_path / "gnd.json").write_text(json.dumps(gnd))
  return ["--features", tmp_path / "feats.npz", "--gnd", tmp_path / "gnd.json"]


@pytest.mark.parametrize("poison", ["nan", "inf", "float64_1e300"])
def test_eval_refuses_a_non_finite_model(tmp_path, finished, poison):
  with np.load(os.path.join(finished, "state_dict.npz")) as z:
    arrays = {k: z[k] for k in z.files}
  name = "param/blocks.0.attn.proj.weight"
  a = arrays[name].astype(np.float64 if poison == "float64_1e300" else np.float32)
  a[1, 2] = {"nan": np.nan, "inf": np.inf, "float64_1e300": 1e300}[poison]
  arrays[name] = a
  np.savez(tmp_path / "bad.npz", **arrays)
  res = run_cli(["eval", *_tiny_eval_inputs(tmp_path), "--model", tmp_path / "bad.npz",
                 "--out", tmp_path / "res.json"], cwd=tmp_path)
  expect_input_error(res, "bad.npz", "blocks.0.attn.proj.weight", "finite")
  assert not (tmp_path / "res.json").exists()


# -- group 5: checkpoints -----------------------------------------------------------------------

def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, env, finished):
  w = _resumable_copy(finished, tmp_path)
  _flip_bytes(os.path.join(w, "checkpoints", "12"))
  res = train(tmp_path, env, w, "--resume")
  expect_ok(res)
  warnings = [l for l in res.stderr.splitlines() if "checkpoint 12 is damaged" in l]
  assert len(warnings) == 1 and "trying step 8" in warnings[0], res.stderr
  assert "resumed at step 8" in res.stderr
  want, got = _params(finished), _params(w)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert os.listdir(os.path.join(w, "checkpoints_damaged")), "the damaged step is kept aside"


def test_a_changed_checksum_is_caught_even_when_the_arrays_read_fine(tmp_path, env, finished):
  w = _resumable_copy(finished, tmp_path)
  meta = os.path.join(w, "checkpoints", "12", "meta", "metadata")
  m = json.load(open(meta))
  m["checksum"] = "0" * 64
  json.dump(m, open(meta, "w"))
  # Without the file record (a step saved by an older csa_jax, or a record lost with the
  # damage), the state checksum is what catches it.
  os.remove(os.path.join(w, "checkpoints_digests", "12.json"))
  res = train(tmp_path, env, w, "--resume")
  expect_ok(res)
  assert "checksum" in res.stderr and "resumed at step 8" in res.stderr


def test_a_changed_file_is_caught_before_orbax_reads_it(tmp_path, env, finished):
  w = _resumable_copy(finished, tmp_path)
  meta = os.path.join(w, "checkpoints", "12", "meta", "metadata")
  with open(meta, "a") as f:
    f.write(" ")  # still valid JSON with the same content: only the file record can tell
  res = train(tmp_path, env, w, "--resume")
  expect_ok(res)
  assert "file meta/metadata changed since it was saved" in res.stderr
  assert "resumed at step 8" in res.stderr


def test_every_checkpoint_damaged_is_one_line(tmp_path, env, finished):
  w = _resumable_copy(finished, tmp_path)
  for step in ("8", "12"):
    _flip_bytes(os.path.join(w, "checkpoints", step))
  expect_input_error(train(tmp_path, env, w, "--resume"), "checkpoints",
                     "expected an intact checkpoint")
  assert not os.path.exists(os.path.join(w, "state_dict.npz"))


def test_resume_with_other_hyper_parameters_is_refused_even_without_config_json(tmp_path, env,
                                                                                 finished):
  w = _resumable_copy(finished, tmp_path)
  os.remove(os.path.join(w, "config.json"))
  res = train(tmp_path, env, w, "--resume", "--config.train.base_lr=0.3")
  line = expect_input_error(res, "train.base_lr", "0.1", "0.3", "--allow-config-change")
  assert "checkpoints" in line  # the config came from the checkpoint itself
  assert "cannot schedule new futures" not in res.stderr


def test_allow_config_change_resumes_and_reports_each_change(tmp_path, env, finished):
  w = _resumable_copy(finished, tmp_path)
  shutil.rmtree(os.path.join(w, "checkpoints", "12"))  # steps 9-12 run again, at the new rate
  res = train(tmp_path, env, w, "--resume", "--allow-config-change",
              "--config.train.base_lr=0.3")
  expect_ok(res)
  assert "train.base_lr changed from 0.1 to 0.3" in res.stderr
  assert json.load(open(os.path.join(w, "config.json")))["train"]["base_lr"] == 0.3
  got, want = _params(w), _params(finished)
  assert any(not np.array_equal(got[k], want[k]) for k in want), "the new rate must be used"


def test_allow_config_change_never_changes_the_model_shape(tmp_path, env, finished):
  w = _resumable_copy(finished, tmp_path)
  res = train(tmp_path, env, w, "--resume", "--allow-config-change", "--config.model.dim=32")
  expect_input_error(res, "model.dim", "start a new workdir")


# -- group 8: config values and files -------------------------------------------------------

@pytest.mark.parametrize("override,needle", [
    ("train.epochs=0", "train.epochs"),
    ("train.warmup_epochs=5", "train.warmup_epochs"),
    ("data.K=1000", "data.K"),
    ("train.seed=-1", "train.seed"),
    ("train.global_batch=0", "train.global_batch"),
    ("train.momentum=1.5", "train.momentum"),
    ("checkpoint.keep=0", "checkpoint.keep"),
    ("model.heads=0", "heads"),
    ("model.heads=3", "heads"),
    ("model.drop=1.5", "drop"),
    ("train.epochs=abc", "train.epochs"),
    ("train.no_such_key=1", "no_such_key"),
])
def test_bad_config_values_are_one_line(tmp_path, env, override, needle):
  expect_input_error(train(tmp_path, env, tmp_path / "w", f"--config.{override}"), needle)


def test_workdir_that_is_a_file(tmp_path, env):
  (tmp_path / "w").write_text("not a directory")
  expect_input_error(train(tmp_path, env, tmp_path / "w"), "--workdir", "a file")


def test_config_file_with_a_syntax_error(tmp_path, env):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n  return 1\n")
  expect_input_error(train(tmp_path, env, tmp_path / "w", config=bad), "bad.py", "line 1",
                     "syntax error")


def test_config_file_that_raises(tmp_path, env):
  bad = tmp_path / "raises.py"
  bad.write_text("def get_config():\n  raise RuntimeError('boom')\n")
  expect_input_error(train(tmp_path, env, tmp_path / "w", config=bad), "raises.py", "boom")


def test_files_config_without_data_root_names_the_unset_key(tmp_path, env):
  expect_input_error(train(tmp_path, env, tmp_path / "w", config=RSFM), "data.root", "unset")


def test_data_root_that_does_not_exist(tmp_path, env):
  res = train(tmp_path, env, tmp_path / "w", f"--config.data.root={tmp_path / 'nope'}",
              config=RSFM)
  expect_input_error(res, "data.root", "no such directory")


# -- group 9: lock, leftovers, modes ----------------------------------------------------------

def test_a_second_run_in_a_locked_workdir_is_refused(tmp_path, env):
  w = tmp_path / "w"
  w.mkdir()
  fd = os.open(w / ".lock", os.O_RDWR | os.O_CREAT)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    line = expect_input_error(train(tmp_path, env, w), "--workdir", "pid 4242")
    assert "another" in line or "other run" in line
  finally:
    os.close(fd)
  assert not (w / "metrics.jsonl").exists()


def test_stale_temp_files_are_removed_and_outputs_follow_the_umask(tmp_path, env):
  w = tmp_path / "w"
  w.mkdir()
  stale = w / ".state_dict.npz.k1ll3d.tmp"
  stale.write_bytes(b"half an export")
  old = os.umask(0o002)
  try:
    expect_ok(train(tmp_path, env, w))
  finally:
    os.umask(old)
  assert not stale.exists()
  assert leftover_temp_files(w) == []
  for name in ("state_dict.npz", "config.json", "metrics.jsonl"):
    assert os.stat(w / name).st_mode & 0o777 == 0o664, name


@pytest.mark.parametrize("args", [
    ["demo", "--out", "{f}"],
    ["demo", "--out", "{f}/sub"],
    ["bench", "--no-torch", "--out", "{f}/bench.json"],
    ["experiment", "seeds", "--out", "{f}"],
])
def test_outputs_under_a_file_are_refused_before_any_work(tmp_path, env, args):
  f = tmp_path / "a_file"
  f.write_text("x")
  res = run_cli([a.format(f=f) for a in args], cwd=tmp_path, env=env, timeout=60)
  expect_input_error(res, "--out", "a_file")
  assert f.read_text() == "x"
