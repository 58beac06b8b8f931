"""``csa-jax train`` when the disk, the workdir or the checkpoints fail it, one subprocess per case.

Covers: a blank or non-directory workdir, a ``.lock`` that is not csa_jax's lock file, failed
starts that must leave the workdir as they found it, a read-only ``checkpoints/``, a disk that
fills during a save (``RLIMIT_FSIZE``), a read-only neighbour cache, malformed digest records, a
lost record with a damaged latest step, an ``epochs`` value below the run's position, the start
records of ``run.json`` and a truncated TFDS shard. Every failure is one line naming the path (and
the errno), nothing is printed after it, the last intact checkpoint is kept and the workdir stays
resumable.
"""

import glob
import json
import os
import shutil
import stat

import numpy as np
import pytest

from hostile_cli import (assert_tree_unchanged, expect_input_error, expect_ok, fast_compile_env,
                         finished_tiny_run, leftover_temp_files, train_cli, tree_snapshot)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RSFM = os.path.join(ROOT, "configs", "rsfm120k.py")
SYNTH = os.path.join(ROOT, "configs", "synthetic.py")

pytestmark = pytest.mark.slow


def _can_drop_root_overrides() -> bool:
  """Whether a read-only directory is read-only for the command (not root, or root that may drop
  CAP_DAC_OVERRIDE: CAP_SETPCAP, bit 8, in its effective set)."""
  if os.geteuid() != 0:
    return True
  with open("/proc/self/status") as f:
    eff = next((int(l.split()[1], 16) for l in f if l.startswith("CapEff:")), 0)
  return bool(eff & (1 << 8))


needs_modes = pytest.mark.skipif(not _can_drop_root_overrides(),
                                 reason="root that cannot drop CAP_DAC_OVERRIDE ignores modes")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return fast_compile_env(tmp_path_factory.mktemp("jax_cache"))


train = train_cli


@pytest.fixture(scope="module")
def finished(tmp_path_factory, env):
  return finished_tiny_run(tmp_path_factory.mktemp("finished"), env)


def _copy(finished, tmp_path, drop_latest=True):
  """The finished run without its outputs; without checkpoint 12 a resume redoes steps 9-12."""
  w = str(tmp_path / "copy")
  shutil.copytree(finished, w)
  for f in ("state_dict.npz", "state_dict.pth"):
    if os.path.exists(os.path.join(w, f)):
      os.remove(os.path.join(w, f))
  if drop_latest:
    shutil.rmtree(os.path.join(w, "checkpoints", "12"))
    os.remove(os.path.join(w, "checkpoints_digests", "12.json"))
  return w


def _params(workdir):
  with np.load(os.path.join(workdir, "state_dict.npz")) as z:
    return {k: z[k] for k in z.files if k.startswith("param/")}


def _same_params(a, b):
  want, got = _params(a), _params(b)
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _orbax_temps(w):
  return glob.glob(os.path.join(w, "**", "*.orbax-checkpoint-tmp*"), recursive=True)


def _snapshot_but_lock(root):
  """``tree_snapshot`` without ``.lock``, which every start rewrites with its pid."""
  snap = tree_snapshot(root)
  snap.pop(".lock", None)
  return snap


def _only_own_lines(res):
  """Every stderr line is csa-jax's own (no traceback, no library's log record)."""
  stray = [l for l in res.stderr.splitlines()
           if l.strip() and not l.startswith(("csa-jax", "trained "))]
  assert not stray, f"lines not from csa-jax: {stray[:5]}\n{res}"


# -- the workdir and its lock ------------------------------------------------------------------

@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_workdir_is_refused_not_the_current_directory(tmp_path, env, blank):
  (tmp_path / ".notes.tmp").write_text("mine")
  before = tree_snapshot(tmp_path)
  expect_input_error(train(tmp_path, env, blank), "--workdir", "a directory path")
  assert_tree_unchanged(before, tmp_path)


def test_a_fifo_workdir_is_refused(tmp_path, env):
  os.mkfifo(tmp_path / "w")
  expect_input_error(train(tmp_path, env, tmp_path / "w"), "--workdir", "FIFO")


@pytest.mark.parametrize("kind,needle", [("symlink", "symbolic link"), ("dir", "a directory"),
                                         ("content", "other content"),
                                         ("hardlink", "2 hard links")])
def test_a_lock_that_is_not_csa_jax_s_is_refused_untouched(tmp_path, env, kind, needle):
  w, outside = tmp_path / "w", tmp_path / "precious.txt"
  w.mkdir()
  outside.write_text("do not overwrite")
  lock = w / ".lock"
  if kind == "symlink":
    lock.symlink_to(outside)
  elif kind == "dir":
    lock.mkdir()
  elif kind == "content":
    lock.write_text("my notes\n")
  else:
    os.link(outside, lock)
  before = tree_snapshot(tmp_path)
  expect_input_error(train(tmp_path, env, w), str(lock), ".lock", needle)
  assert_tree_unchanged(before, tmp_path)


def test_a_failed_start_leaves_the_workdir_as_it_found_it(tmp_path, env):
  empty_root = tmp_path / "data"
  empty_root.mkdir()
  bad = [f"--config.data.root={empty_root}"]
  # A workdir this start creates (with its parents) is removed again.
  fresh = tmp_path / "new" / "run"
  expect_input_error(train(tmp_path, env, fresh, *bad, config=RSFM), "retrieval-SfM-120k")
  assert not (tmp_path / "new").exists()
  # An existing one keeps exactly what it held, however often the start fails (orbax's
  # background threads once printed tracebacks after the error line in most tries).
  w = tmp_path / "w"
  w.mkdir()
  (w / "notes.txt").write_text("mine")
  before = tree_snapshot(tmp_path)
  for _ in range(3):
    expect_input_error(train(tmp_path, env, w, *bad, config=RSFM), "retrieval-SfM-120k")
    assert_tree_unchanged(before, tmp_path)


# -- I/O failures while training ----------------------------------------------------------------

@needs_modes
def test_a_read_only_checkpoints_directory_is_one_line_and_resumable(tmp_path, env, finished):
  w = _copy(finished, tmp_path)
  ck = os.path.join(w, "checkpoints")
  kept = tree_snapshot(os.path.join(ck, "8"))
  os.chmod(ck, 0o555)
  try:
    res = train(tmp_path, env, w, "--resume", honour_modes=True)
    expect_input_error(res, ck, "step 12", "checkpoint 8 is kept", "Permission denied")
  finally:
    os.chmod(ck, 0o755)
  _only_own_lines(res)
  assert sorted(os.listdir(ck)) == ["8"] and not _orbax_temps(w)
  assert_tree_unchanged(kept, os.path.join(ck, "8"))
  res = train(tmp_path, env, w, "--resume")
  expect_ok(res)
  assert "resumed at step 8" in res.stderr
  _same_params(finished, w)
  # Every start is recorded: the first run's and this resume's (the refused one never got that
  # far: it failed at its first save).
  run = json.load(open(os.path.join(w, "run.json")))
  assert [s["started_at_step"] for s in run["starts"]] == [0, 8, 8]
  assert run["started_at_step"] == 8 and run["command"] == run["starts"][-1]["command"]


def test_a_disk_that_fills_during_a_save_is_one_line_and_resumable(tmp_path, env, finished):
  w = _copy(finished, tmp_path)
  # run.json as a version that kept one record wrote it: upgraded, not lost.
  rec = json.load(open(os.path.join(w, "run.json")))
  old = {k: v for k, v in rec.items() if k != "starts"}
  json.dump(old, open(os.path.join(w, "run.json"), "w"))
  kept = tree_snapshot(os.path.join(w, "checkpoints", "8"))
  # 8000 bytes: below the state files of a save (~9-12 kB), above every other file written first.
  res = train(tmp_path, env, w, "--resume", fsize_bytes=8000)
  expect_input_error(res, os.path.join(w, "checkpoints"), "step 12", "checkpoint 8 is kept",
                     "File too large")
  _only_own_lines(res)
  assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["8"]
  assert not _orbax_temps(w) and leftover_temp_files(w) == []
  assert_tree_unchanged(kept, os.path.join(w, "checkpoints", "8"))
  expect_ok(train(tmp_path, env, w, "--resume"))
  _same_params(finished, w)
  starts = json.load(open(os.path.join(w, "run.json")))["starts"]
  assert starts[0] == old and [s["started_at_step"] for s in starts] == [0, 8, 8]


def test_a_full_disk_on_the_run_s_own_files_is_one_line(tmp_path, env, finished):
  w = _copy(finished, tmp_path)
  before = _snapshot_but_lock(w)
  res = train(tmp_path, env, w, "--resume", fsize_bytes=1000)  # run.json is larger
  expect_input_error(res, os.path.join(w, "run.json"), "File too large",
                     "--resume continues from step 8")
  _only_own_lines(res)
  assert_tree_unchanged(before, w, new_ok=[".lock"])


@needs_modes
def test_a_read_only_neighbour_cache_is_one_line(tmp_path, env):
  from csa_jax.data import synthetic  # noqa: PLC0415
  from csa_jax.experiments import demo  # noqa: PLC0415
  root = tmp_path / "data"
  synthetic.write_benchmark(root, demo.SIZES["tiny"][0])
  cache = tmp_path / "cache"
  cache.mkdir()
  os.chmod(cache, 0o555)
  w = tmp_path / "w"
  try:
    res = train(tmp_path, env, w, f"--config.data.root={root}", f"--config.data.cache_dir={cache}",
                "--config.data.K=16", "--config.model.anchors=16", config=SYNTH,
                honour_modes=True)
  finally:
    os.chmod(cache, 0o755)
  expect_input_error(res, str(cache), "data.cache_dir", "Permission denied")
  _only_own_lines(res)
  assert os.listdir(cache) == [] and not w.exists()


# -- checkpoint records --------------------------------------------------------------------------

@pytest.mark.parametrize("record,problem", [("{}", "empty"), ("[]", "JSON list"),
                                            ("not json", "not JSON"),
                                            ('{"meta/metadata": 5}', "SHA-256")])
def test_a_malformed_digest_record_warns_once_and_keeps_the_checkpoint(tmp_path, env, finished,
                                                                       record, problem):
  w = _copy(finished, tmp_path, drop_latest=False)
  path = os.path.join(w, "checkpoints_digests", "12.json")
  with open(path, "w") as f:
    f.write(record)
  res = train(tmp_path, env, w, "--resume")
  expect_ok(res)
  _only_own_lines(res)
  warnings = [l for l in res.stderr.splitlines() if "warning" in l]
  assert len(warnings) == 1 and path in warnings[0] and problem in warnings[0], res.stderr
  assert "state checksum" in warnings[0] and "resumed at step 12" in res.stderr
  assert not os.path.exists(os.path.join(w, "checkpoints_damaged"))
  _same_params(finished, w)


def test_a_lost_record_and_a_truncated_latest_step_fall_back_with_one_warning(tmp_path, env,
                                                                              finished):
  w = _copy(finished, tmp_path, drop_latest=False)
  os.remove(os.path.join(w, "checkpoints_digests", "12.json"))
  files = [f for f in glob.glob(os.path.join(w, "checkpoints", "12", "state", "**", "d", "*"),
                                recursive=True) if os.path.isfile(f)]
  assert files
  for f in files:
    os.truncate(f, os.path.getsize(f) // 2)
  res = train(tmp_path, env, w, "--resume")
  expect_ok(res)
  _only_own_lines(res)
  warnings = [l for l in res.stderr.splitlines() if "warning" in l]
  assert len(warnings) == 1 and "checkpoint 12 is damaged" in warnings[0], res.stderr
  assert "bound method" not in res.stderr and "resumed at step 8" in res.stderr
  _same_params(finished, w)


# -- the run's position and its record -----------------------------------------------------------

def test_fewer_epochs_than_the_run_has_done_are_refused(tmp_path, env, finished):
  w = _copy(finished, tmp_path, drop_latest=False)
  before = _snapshot_but_lock(w)
  res = train(tmp_path, env, w, "--resume", "--allow-config-change", "--config.train.epochs=1")
  expect_input_error(res, "train.epochs", "at least the 2 epochs", "step 12", "found 1")
  assert "done at step" not in res.stderr
  assert_tree_unchanged(before, w, new_ok=[".lock"])


# -- TFDS -----------------------------------------------------------------------------------------

def test_a_truncated_tfds_shard_names_the_file(tmp_path, env):
  pytest.importorskip("tensorflow_datasets")
  from csa_jax.data import synthetic, tfds_builder  # noqa: PLC0415
  from csa_jax.experiments import demo  # noqa: PLC0415
  root, out = tmp_path / "data", tmp_path / "tfds"
  synthetic.write_benchmark(root, demo.SIZES["tiny"][0])
  where = tfds_builder.build_tfds(root, synthetic.FEATURES, out)
  shard = glob.glob(os.path.join(where, "*-train.array_record-*"))[0]
  os.truncate(shard, os.path.getsize(shard) // 2)
  st = os.stat(shard)
  w = tmp_path / "w"
  res = train(tmp_path, env, w, "--config.data.source=tfds", f"--config.data.root={out}",
              "--config.data.K=16", "--config.model.anchors=16", config=SYNTH)
  line = expect_input_error(res, shard, "train shard", "complete ArrayRecord shard")
  assert "np_map_fn" not in line and "NoneType" not in line
  assert os.stat(shard).st_size == st.st_size and stat.S_ISREG(st.st_mode)
  assert not w.exists()
