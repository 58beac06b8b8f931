"""Training checkpoints with orbax: everything an exact resume needs, written atomically.

A checkpoint holds the ``TrainState`` (step, params, optimizer state incl. the momentum, the
schedule count and the skipped count), the run's base PRNG key, and JSON metadata: the position
in the data order (epoch, step in epoch), the seed and the config. orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-save leaves the previous
checkpoint as the latest; only the last ``keep`` are kept. Saves are synchronous: the training
step donates its state buffers right after, and the state is small (tens of MB).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from csa_jax.errors import InputError


def _host_copy(x):
  if isinstance(x, jax.Array):
    if not x.is_fully_replicated:
      raise ValueError("Checkpointer saves replicated training state only")
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


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
    # The key is tiny and identical on every process: JSON keeps it out of the array layout.
    meta = dict(meta, rng_key_data=np.asarray(jax.random.key_data(rng)).tolist(),
                rng_impl=str(jax.random.key_impl(rng)))
    # Replicated state is written from host copies: the same bytes, without orbax compiling a
    # slice per device to pick replicas.
    host = jax.tree.map(_host_copy, state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta))
    self._mgr.save(int(step), args=args, force=True)
    self._mgr.wait_until_finished()

  def restore(self, like_state, step: int | None = None):
    """(state, rng, meta) of ``step`` (default the latest), laid out like ``like_state``.

    like_state: a state of the same structure (e.g. freshly initialised) whose arrays give the
    shapes, dtypes and shardings to restore into.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise InputError(f"{self.directory}: checkpoints: expected a checkpoint to resume from, "
                       "found none")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    out = self._mgr.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    meta = dict(out["meta"])
    key_data = np.asarray(meta.pop("rng_key_data"), np.uint32)
    rng = jax.random.wrap_key_data(key_data, impl=meta.pop("rng_impl"))
    return out["state"], rng, meta

  def close(self) -> None:
    self._mgr.close()
