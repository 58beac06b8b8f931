"""What ``train`` checks before any heavy work: config values, the workdir and its lock.

Every check raises ``InputError`` with one line naming the key, so ``csa-jax train`` fails in
seconds (exit 2) instead of after loading data, compiling or training, and never leaves a
half-initialised workdir behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import stat
from typing import Any

import jax
import numpy as np

from csa_jax import configs
from csa_jax.errors import InputError, fail
from csa_jax.fileio import check_output_path
from csa_jax.formats.regular_file import kind_of

# Keys that may change between a run and its resume without changing what is computed.
RESUMABLE_CHANGES = ("checkpoint.", "log.", "eval.", "data.root", "data.cache_dir")
# Keys a resume can never change, even when told to accept a changed config: the checkpoint's
# array shapes and the position in the data order depend on them.
FIXED_ON_RESUME = ("model.anchors", "model.dim", "model.depth", "model.heads", "model.mlp_ratio",
                   "model.qkv_bias", "train.global_batch", "train.seed")
# Keys added after runs were saved without them: an absent value means this default, so such a
# run resumes with an unchanged config.
ADDED_DEFAULTS = {"train.microbatches": 1, "model.attention": "auto"}
LOCK_NAME = ".lock"
_LOCK_MAX_BYTES = 32  # a pid and a newline; anything longer is not a lock csa_jax wrote
_LOCK_TRIES = 20  # times a lock is retaken when its file was replaced meanwhile
SEED_MAX = 2**32 - 1  # the largest seed every PRNG here (numpy, JAX threefry) accepts as is

log = logging.getLogger(__name__)


def _number(config, key: str, *, lo=None, hi=None, lo_open=False, hi_open=False,
            integer=False) -> None:
  group, name = key.split(".")
  v = config[group][name]
  kind = "an integer" if integer else "a finite number"
  rng = ""
  if lo is not None:
    rng += f" {'>' if lo_open else '>='} {lo}"
  if hi is not None:
    rng += (" and" if rng else "") + f" {'<' if hi_open else '<='} {hi}"
  ok = isinstance(v, int) if integer else isinstance(v, (int, float)) and math.isfinite(v)
  ok = ok and not isinstance(v, bool)
  if ok and lo is not None:
    ok = v > lo if lo_open else v >= lo
  if ok and hi is not None:
    ok = v < hi if hi_open else v <= hi
  if not ok:
    raise fail("config", key, kind + rng, repr(v))


def validate_config(config, check_data: bool = True) -> None:
  """Range checks of every value ``train`` uses; the model group is checked by ``ModelConfig``.

  Args:
    config: a training config.
    check_data: also check the data group (False when the caller brings its own training set).
  """
  for key in ("train.global_batch", "train.epochs", "checkpoint.every_steps", "checkpoint.keep",
              "log.every_steps", "data.K"):
    _number(config, key, lo=1, integer=True)
  _number(config, "train.warmup_epochs", lo=0, hi=config.train.epochs, integer=True)
  _number(config, "train.seed", lo=0, hi=SEED_MAX, integer=True)
  for key in ("train.base_lr", "train.warmup_lr", "train.final_lr", "train.weight_decay",
              "train.clip_norm", "train.alpha"):
    _number(config, key, lo=0)
  _number(config, "train.momentum", lo=0, hi=1, hi_open=True)
  if "microbatches" in config.train:  # absent in configs written before it: 1
    _number(config, "train.microbatches", lo=1, integer=True)
    # Device-independent half of the check; the training loop also needs it to divide the
    # per-device batch (``step.check_microbatches``).
    if config.train.global_batch % config.train.microbatches:
      raise fail("config", "train.microbatches", "a divisor of train.global_batch "
                 f"({config.train.global_batch})", repr(config.train.microbatches))
  if config.get("eval") is not None:
    _number(config, "eval.every_epochs", lo=0, integer=True)
  d = config.data
  if not check_data:
    return
  if d.source == "random":
    for key in ("data.num_samples", "data.num_clusters", "data.dim"):
      _number(config, key, lo=1, integer=True)
    _number(config, "data.K", lo=1, hi=d.num_samples, integer=True)
  elif d.source == "files":
    _check_data_paths(d)
  elif d.source == "tfds":
    if not d.descriptors:
      raise fail("config", "data.descriptors", "at least one descriptor set name", "()")
    if not d.root or not os.path.isdir(d.root):
      raise fail("config", "data.root", "the TFDS data_dir that convert-data --to tfds wrote "
                 "(--config.data.root=DIR)", repr(d.root) if d.root else "it unset")
  else:
    raise fail("config", "data.source", "'files', 'tfds' or 'random'", repr(d.source))


def _check_data_paths(d) -> None:
  if not d.descriptors:
    raise fail("config", "data.descriptors", "at least one descriptor file", "()")
  paths = [("data.descriptors", p) for p in d.descriptors] + [("data.annotations",
                                                              d.annotations)]
  for key, p in paths:
    if not p:
      raise fail("config", key, "a file path", repr(p))
    if d.root is None and not os.path.isabs(p) and not os.path.exists(p):
      # The usual mistake is a forgotten --config.data.root, not a wrong relative path.
      raise fail("config", "data.root", f"the data root that holds {key} {p!r} "
                 "(--config.data.root=DIR)", "it unset")
  if d.root is not None and not os.path.isdir(d.root):
    raise fail(d.root, "data.root", "a directory holding the data layout", "no such directory")


def check_workdir(workdir: str) -> str:
  """The workdir, absolute and created; one line if it cannot be one.

  Refused: an empty or blank path (an unset shell variable must not make the current directory a
  workdir), anything but a directory, a directory that cannot be created or written.
  """
  raw = os.fspath(workdir)
  if not raw.strip():
    raise fail("command line", "--workdir", "a directory path",
               f"the blank string {raw!r}" if raw else "an empty string")
  workdir = os.path.abspath(raw)
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    kind = ("a broken symbolic link" if not os.path.exists(workdir) else
            "a file" if os.path.isfile(workdir) else kind_of(os.stat(workdir).st_mode))
    raise fail(workdir, "--workdir", "a directory", kind)
  check_output_path(os.path.join(workdir, "config.json"), "--workdir")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise fail(workdir, "--workdir", "a directory it can create",
               e.strerror or type(e).__name__) from None
  return workdir


class WorkdirLock:
  """What ``workdir_lock`` holds: the lock file's path and whether this start created it."""

  def __init__(self, path: str | None, created: bool):
    self.path, self.created = path, created


def _lock_error(path: str, found: str) -> InputError:
  return fail(path, "--workdir", f"{LOCK_NAME} to be a lock file csa_jax wrote (a regular file "
              "of this user holding a pid; remove it if no run uses this workdir)", found)


def _open_lock(path: str) -> tuple[int, bool]:
  """(fd, created) of the lock file, opened without following a symlink or blocking on a FIFO,
  and refused unless it is what csa_jax writes there: a regular file of this user, not linked
  elsewhere, empty or holding a pid. It is overwritten with this run's pid: anything else would
  be a file csa_jax did not create."""
  flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
  while True:
    try:
      return _checked_lock_fd(path, os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)), True
    except FileExistsError:
      pass
    except OSError as e:
      raise fail(path, "--workdir", f"a writable directory for {LOCK_NAME}",
                 f"[Errno {e.errno}] {e.strerror}") from None
    try:
      return _checked_lock_fd(path, os.open(path, flags)), False
    except FileNotFoundError:
      continue  # removed between the two opens (a failed start cleaning up): create it
    except OSError as e:
      if e.errno == errno.ELOOP:
        raise _lock_error(path, "a symbolic link") from None
      if e.errno == errno.EISDIR:
        raise _lock_error(path, "a directory") from None
      raise fail(path, "--workdir", f"a readable and writable {LOCK_NAME}",
                 f"[Errno {e.errno}] {e.strerror}") from None


def _checked_lock_fd(path: str, fd: int) -> int:
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise _lock_error(path, kind_of(st.st_mode))
    if st.st_uid != os.geteuid():
      raise _lock_error(path, f"a file of user id {st.st_uid}")
    if st.st_nlink != 1:
      raise _lock_error(path, f"a file with {st.st_nlink} hard links")
    head = os.pread(fd, _LOCK_MAX_BYTES + 1, 0)
    if len(head) > _LOCK_MAX_BYTES or not re.fullmatch(rb"[0-9]*\n?", head):
      raise _lock_error(path, "other content")
    return fd
  except BaseException:
    os.close(fd)
    raise


@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True):
  """Holds ``<workdir>/.lock`` (an exclusive ``flock``) for the body; a second run fails.

  The kernel drops the lock when the process dies, so a killed run never leaves it stale. When
  the body fails and this start created the lock file, it is removed again, while still locked;
  a run that locks it checks that the file it locked is still the one at the path (else it
  locked a file already unlinked, and tries again).

  Args:
    workdir: the run's directory (``check_workdir``).
    enabled: False on all but one process of a multi-process run (they share the workdir).

  Yields:
    A ``WorkdirLock``.
  """
  if not enabled:
    yield WorkdirLock(None, False)
    return
  path = os.path.join(workdir, LOCK_NAME)
  for _ in range(_LOCK_TRIES):
    fd, created = _open_lock(path)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
        raise fail(path, "--workdir", f"a lockable {LOCK_NAME}",
                   f"[Errno {e.errno}] {e.strerror}") from None
      raise InputError(f"{workdir}: --workdir: expected no other run in this workdir, found "
                       f"one running (pid {holder})") from None
    if _same_file(fd, path):
      break
    os.close(fd)
  else:
    raise fail(path, "--workdir", f"a stable {LOCK_NAME}",
               f"it replaced {_LOCK_TRIES} times while locking")
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield WorkdirLock(path, created)
  except BaseException:
    if created:
      with contextlib.suppress(OSError):
        os.unlink(path)  # still locked: no other run can hold this file now
    raise
  finally:
    os.close(fd)


def _same_file(fd: int, path: str) -> bool:
  try:
    a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
  except OSError:
    return False
  return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _config_changes(saved: dict, now: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
  """(key, saved value, current value) for every leaf that differs, ignoring harmless keys."""
  out = []
  for k in sorted(set(saved) | set(now)):
    key = prefix + k
    if any(key.startswith(p) for p in RESUMABLE_CHANGES):
      continue
    absent = ADDED_DEFAULTS.get(key, "<absent>")
    va, vb = saved.get(k, absent), now.get(k, absent)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _config_changes(va, vb, key + ".")
    elif va != vb:
      out.append((key, va, vb))
  return out


def check_resume_config(saved: dict, config, source: str, allow_change: bool) -> None:
  """Refuses a resume whose config differs from the saved run's (unless ``allow_change``).

  Args:
    saved: the config the run was started with (from its checkpoint or config.json).
    config: the config of this call.
    source: where ``saved`` came from (for the error line).
    allow_change: accept changes (each logged), except of ``FIXED_ON_RESUME`` keys.
  """
  changes = _config_changes(saved, configs.as_plain(config))
  for key, va, vb in changes:
    if not allow_change or key in FIXED_ON_RESUME:
      how = "start a new workdir" + ("" if key in FIXED_ON_RESUME else
                                     ", or pass --allow-config-change")
      raise InputError(f"{source}: {key}: expected the resumed run's value {va!r}, found "
                       f"{vb!r} ({how} to change it)")
  for key, va, vb in changes:
    log.warning("resuming with %s changed from %r to %r "
                "(--allow-config-change)", key, va, vb)


def saved_config(ckpt, step: int, cfg_path: str):
  """(the config the run was started with, where it came from), or (None, None) if unknown."""
  try:
    saved = ckpt.read_meta(step).get("config")
  except Exception:  # a damaged latest checkpoint: restore() falls back and reports it
    saved = None
  if saved is not None:
    return saved, f"{ckpt.directory}/{step}"
  if os.path.exists(cfg_path):
    try:
      with open(cfg_path) as f:
        return json.load(f), cfg_path
    except (OSError, ValueError):
      pass
  return None, None


def check_outcome(params, skipped: int, skipped_last_epoch: int, total: int, spe: int) -> None:
  """Refuses to export a model that training never changed, that diverged, or that is not finite."""
  hint = "(non-finite loss or parameters: lower train.base_lr or check the data)"
  if skipped >= total:
    raise InputError(f"config: train: expected training to apply updates, found every one of "
                     f"the {total} steps skipped {hint}; nothing exported")
  if skipped_last_epoch >= spe:
    raise InputError(f"config: train: expected a converging run, found every step of the last "
                     f"epoch skipped {hint}; nothing exported")
  bad = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
         if not np.isfinite(np.asarray(v)).all()]
  if bad:
    raise InputError(f"config: train: expected finite parameters, found NaN/inf in {bad[0]}; "
                     "nothing exported")
