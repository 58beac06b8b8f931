"""Training checkpoints with orbax: everything an exact resume needs, written atomically, verified.

A checkpoint holds the ``TrainState`` (step, params, optimizer state incl. the momentum, the
schedule count and the skipped count), the run's base PRNG key, and JSON metadata: the position
in the data order (epoch, step in epoch), the seed, the run's config and a SHA-256 of the state's
bytes. orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint as the latest; only the last ``keep`` are kept.
Saves are synchronous: the training step donates its state buffers right after, and the state is
small (tens of MB).

A restore recomputes the checksum from what it read: a checkpoint that fails to read or whose
bytes changed (a flipped bit on disk) is reported in one warning line and the next older kept
checkpoint is used; only when none is intact is it an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from csa_jax.errors import InputError

log = logging.getLogger(__name__)


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
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False,
        cleanup_tmp_directories=True)
    self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                      item_names=("state", "meta"))

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
    self._mgr.save(int(step), args=args, force=True)
    self._mgr.wait_until_finished()

  def read_meta(self, step: int) -> dict:
    """The JSON metadata of ``step`` alone (cheap: no arrays are read)."""
    out = self._mgr.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def _restore_one(self, like_state, step: int):
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
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
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
    self._mgr.reload()

  def close(self) -> None:
    self._mgr.close()
