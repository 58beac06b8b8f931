"""Training checkpoints with orbax: everything an exact resume needs, written atomically, verified.

A checkpoint holds the ``TrainState`` (step, params, optimizer state incl. the momentum, the
schedule count and the skipped count), the run's base PRNG key, and JSON metadata: the position
in the data order (epoch, step in epoch), the seed, the run's config and a SHA-256 of the state's
bytes. orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint as the latest; only the last ``keep`` are kept.
Saves are synchronous: the training step donates its state buffers right after, and the state is
small (tens of MB).

Beside the checkpoints, ``<checkpoints>_digests/<step>.json`` records a SHA-256 of every file of
each step. A restore first compares the files with that record (so a damaged file never reaches
orbax), then recomputes the state checksum from what it read: a checkpoint that fails either
check or fails to read is reported in one warning line and the next older kept checkpoint is
used; only when none is intact is it an error. A step without a record (saved by an older
csa_jax) is verified by the state checksum alone; so is a step whose record is unreadable or
malformed (not JSON, not an object of file name -> SHA-256 hex, or empty), after one warning: a
damaged record never sets an intact checkpoint aside, and is never ignored without a word.

A save that fails (a read-only or full disk) is one ``InputError`` line naming the path and the
errno; orbax's half-written ``<step>.orbax-checkpoint-tmp`` is removed and the older checkpoints
stay as they were. orbax and tensorstore also report such a failure from their background
threads, after the error has reached the caller: ``csa-jax`` routes those reports to debug
records (``orbax_errors.quiet_background_errors``); a library user's process keeps its hooks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from csa_jax.errors import InputError, fail, short_reason
from csa_jax.fileio import errno_text, os_reason, write_json
from csa_jax.train.orbax_errors import os_error_of

log = logging.getLogger(__name__)
DIGESTS_SUFFIX = "_digests"  # <checkpoints>_digests/<step>.json: SHA-256 of each file of a step
# orbax's temporary directory of a step being saved (older versions add "-<timestamp>").
_ORBAX_TMP = re.compile(r"[0-9]+\.orbax-checkpoint-tmp(-[0-9]+)?")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _host_copy(x):
  if isinstance(x, jax.Array):
    if not x.is_fully_replicated:
      raise ValueError("Checkpointer saves replicated training state only")
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


def state_checksum(host_state, key_data) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes, then the PRNG key data."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(host_state)[0]:
    a = np.ascontiguousarray(_host_copy(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  h.update(np.ascontiguousarray(key_data, np.uint32).tobytes())
  return h.hexdigest()


class Checkpointer:
  """``save(step, state, rng, meta)``, ``latest_step()``, ``restore(like_state, step=None)``."""

  def __init__(self, directory: str, keep: int = 3):
    if keep < 1:
      raise InputError(f"config: checkpoint.keep: expected >= 1, found {keep}")
    self.directory = os.path.abspath(os.fspath(directory))
    self._failed = False
    # orbax's own clean-up of a killed save's temporary directory runs on a thread that close()
    # does not wait for; at exit it then fails ("cannot schedule new futures after interpreter
    # shutdown"). Done here, synchronously, instead.
    self._remove_temps()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False,
        cleanup_tmp_directories=False)
    try:
      self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                        item_names=("state", "meta"))
    except OSError as e:
      raise fail(e.filename or self.directory, "checkpoints", "a directory it can create",
                 os_reason(e)) from None

  def _remove_temps(self, warn: bool = True) -> int:
    """Removes orbax's temporary directories of unfinished saves (process 0; only those).

    Returns:
      How many there were.
    """
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return 0
    found = 0
    for name in os.listdir(self.directory):
      path = os.path.join(self.directory, name)
      if _ORBAX_TMP.fullmatch(name) and os.path.isdir(path) and not os.path.islink(path):
        found += 1
        try:
          shutil.rmtree(path)
        except OSError as e:
          if warn:
            log.warning("%s: cannot remove an unfinished save (%s)", path,
                        e.strerror or type(e).__name__)
    return found

  def _remove_temps_settled(self, timeout_s: float = 5.0) -> None:
    """``_remove_temps`` until none is left: after a failed save tensorstore's own threads may
    still write into the temporary directory (recreating it) for a moment after orbax stops."""
    deadline = time.monotonic() + timeout_s
    while self._remove_temps(warn=False) and time.monotonic() < deadline:
      time.sleep(0.05)
    self._remove_temps()  # a last pass that says what it could not remove

  def latest_step(self) -> int | None:
    self._mgr.reload()
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    self._mgr.reload()
    return sorted(self._mgr.all_steps())

  def save(self, step: int, state, rng: jax.Array, meta: dict[str, Any]) -> None:
    """Writes checkpoint ``step`` (replaces nothing: a step is saved once)."""
    # Replicated state is written from host copies: the same bytes, without orbax compiling a
    # slice per device to pick replicas.
    host = jax.tree.map(_host_copy, state)
    key_data = np.asarray(jax.random.key_data(rng))
    # The key is tiny and identical on every process: JSON keeps it out of the array layout.
    meta = dict(meta, rng_key_data=key_data.tolist(), rng_impl=str(jax.random.key_impl(rng)),
                checksum=state_checksum(host, key_data))
    args = ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta))
    try:
      self._mgr.save(int(step), args=args, force=True)
      self._mgr.wait_until_finished()
      if jax.process_index() == 0:
        self._write_digest(int(step))
    except Exception as e:  # noqa: BLE001  (orbax/tensorstore wrap OS errors in many types)
      self._failed = True
      found = os_error_of(e)
      if found is None:
        raise
      code, path = found
      self._remove_temps()
      kept = [s for s in self._steps_on_disk() if s != int(step)]
      keep = (f"checkpoint {kept[-1]} is kept, --resume continues from it" if kept else
              "no checkpoint was kept")
      # The file that failed was in orbax's temporary directory, removed now: named relative
      # to the checkpoints, which the line names.
      where = ""
      if path:
        rel = os.path.relpath(path, self.directory)
        where = f" writing {path if rel.startswith(os.pardir) else rel}"
      raise fail(self.directory, "checkpoints", f"to save step {int(step)} ({keep})",
                 errno_text(code) + where) from None

  def _steps_on_disk(self) -> list[int]:
    """The finished steps in the directory, read without orbax (which may be what failed)."""
    try:
      names = os.listdir(self.directory)
    except OSError:
      return []
    return sorted(int(n) for n in names if n.isdigit()
                  and os.path.isdir(os.path.join(self.directory, n)))

  def read_meta(self, step: int) -> dict:
    """The JSON metadata of ``step`` alone (cheap: no arrays are read)."""
    out = self._mgr.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def _digest_path(self, step: int) -> str:
    return os.path.join(self.directory + DIGESTS_SUFFIX, f"{step}.json")

  def _file_digests(self, step: int) -> dict[str, str]:
    root = os.path.join(self.directory, str(step))
    out = {}
    for d, _, files in os.walk(root):
      for f in files:
        path = os.path.join(d, f)
        h = hashlib.sha256()
        with open(path, "rb") as fh:
          for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
        out[os.path.relpath(path, root)] = h.hexdigest()
    return out

  def _write_digest(self, step: int) -> None:
    """Records a SHA-256 of every file of ``step`` beside the checkpoints, and forgets the
    records of steps orbax has since deleted."""
    write_json(self._digest_path(step), self._file_digests(step))
    kept = {str(s) for s in self.all_steps()}
    for f in os.listdir(self.directory + DIGESTS_SUFFIX):
      if f.endswith(".json") and f[:-5] not in kept:
        with contextlib.suppress(OSError):
          os.remove(os.path.join(self.directory + DIGESTS_SUFFIX, f))

  def _read_record(self, step: int) -> dict[str, str] | None:
    """The file record of ``step``; None when there is none, or when it is unreadable or
    malformed (one warning: the state checksum alone then verifies the step)."""
    path = self._digest_path(step)
    try:
      with open(path, "rb") as f:
        raw = f.read(1 << 20)
    except FileNotFoundError:
      log.debug("%s: no file record; checkpoint %d is verified by its state checksum", path,
                step)
      return None
    except OSError as e:
      problem = f"unreadable: {e.strerror or type(e).__name__}"
    else:
      problem = _record_problem(raw)
      if problem is None:
        return json.loads(raw)
    log.warning("%s: file record of checkpoint %d is %s; verifying the checkpoint by its state "
                "checksum alone", path, step, problem)
    return None

  def _check_files(self, step: int) -> None:
    """Raises if a file of ``step`` changed since it was saved. Done before orbax reads
    anything: a damaged file is then never handed to tensorstore, whose background threads
    report failed reads. Steps without a usable record go straight to orbax."""
    want = self._read_record(step)
    if want is None:
      return
    got = self._file_digests(step)
    for name in sorted(set(want) | set(got)):
      if want.get(name) != got.get(name):
        raise ValueError(f"file {name} {'is missing' if name not in got else 'changed'} "
                         "since it was saved")

  def _restore_one(self, like_state, step: int):
    self._check_files(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    out = self._mgr.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    meta = dict(out["meta"])
    key_data = np.asarray(meta.pop("rng_key_data"), np.uint32)
    want = meta.pop("checksum", None)
    if want is None:
      raise ValueError("no checksum recorded")
    got = state_checksum(out["state"], key_data)
    if got != want:
      raise ValueError(f"content checksum {got[:12]}... differs from the saved {want[:12]}...")
    rng = jax.random.wrap_key_data(key_data, impl=meta.pop("rng_impl"))
    return out["state"], rng, meta

  def restore(self, like_state, step: int | None = None):
    """(state, rng, meta) of ``step`` (default: the latest intact checkpoint).

    Args:
      like_state: a state of the same structure (e.g. freshly initialised) whose arrays give the
        shapes, dtypes and shardings to restore into.
      step: a given step is restored or fails; without it a damaged latest checkpoint falls back
        to the next older kept one, with a warning.

    Returns:
      (state, rng, meta); ``meta['step']`` is the step restored when the saver recorded it.
    """
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    if not steps:
      raise InputError(f"{self.directory}: checkpoints: expected a checkpoint to resume from, "
                       "found none")
    damaged = []
    for s in steps:
      try:
        out = self._restore_one(like_state, s)
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        reason = short_reason(e)
        damaged.append((s, reason))
        nxt = [t for t in steps if t < s]
        log.warning("%s: checkpoint %d is damaged (%s)%s", self.directory, s,
                    reason, f"; trying step {nxt[0]}" if nxt else "")
        continue
      if damaged:
        self._set_aside([d for d, _ in damaged])
      return out
    s, reason = damaged[0]
    raise InputError(f"{self.directory}: checkpoints: expected an intact checkpoint, found "
                     f"{len(damaged)} damaged (step {s}: {reason})")

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged checkpoints out of the way (kept for inspection, never loaded again), so the
    resumed run can save those steps anew."""
    if jax.process_index() == 0:
      dest = self.directory + "_damaged"
      os.makedirs(dest, exist_ok=True)
      for s in steps:
        src = os.path.join(self.directory, str(s))
        if os.path.isdir(src):
          os.replace(src, os.path.join(dest, f"{s}.{time.strftime('%Y%m%dT%H%M%S')}"))
        with contextlib.suppress(OSError):
          os.remove(self._digest_path(s))
    self._mgr.reload()

  def close(self) -> None:
    """Waits for orbax's outstanding work and stops its threads; after a failed save also
    removes what that save left."""
    try:
      self._mgr.close()
    except Exception as e:  # noqa: BLE001
      if not self._failed:
        raise
      # The failure was already reported; orbax re-raises it from the save it could not finish.
      log.debug("closing the checkpointer after a failed save: %s", short_reason(e))
    if self._failed:
      self._remove_temps_settled()


def _record_problem(raw: bytes) -> str | None:
  """What is wrong with a file record's bytes (None: a usable record)."""
  try:
    rec = json.loads(raw)
  except ValueError:
    return "not JSON"
  if not isinstance(rec, dict):
    return f"a JSON {type(rec).__name__}, not an object of file name -> SHA-256"
  if not rec:
    return "empty"
  bad = [k for k, v in rec.items() if not (isinstance(v, str) and _SHA256_HEX.fullmatch(v))]
  if bad:
    return f"not a SHA-256 hex digest for {bad[0]!r}"
  return None
