"""One data-parallel training step (docs/method.md sections 2, 4, 5).

The global batch is sharded over a 1-D ``'data'`` mesh of all devices (of all processes);
parameters and optimizer state are replicated and donated. Written for the global batch (XLA's
partitioner inserts the gradient all-reduce), so the loss is the mean over the global batch and
1 or 8 devices, 1 or 2 processes, compute the same step. Dropout keys use JAX's partitionable
threefry, so the masks do not depend on the sharding either.

Public API (stable; the benchmarks import it):

- ``make_mesh(devices=None) -> Mesh`` with axis ``'data'``.
- ``init_state(model_cfg, tx, rng, mesh) -> TrainState`` (replicated); ``tx`` from
  ``optim.make_optimizer``.
- ``make_train_step(model_cfg, tx, mesh, alpha, K, L, schedule=None)``
  -> ``step(state, train_arrays, idx_B, rng) -> (state, metrics)``: affinities and targets are
  built on device from ``train_arrays = (feats_NxC, nbrs_NxM, clusters_N)`` (``put_replicated``);
  idx_B from ``global_batch_array``.
- ``make_batch_train_step(model_cfg, tx, mesh, alpha, schedule=None)``
  -> ``step(state, aff_BxKxL, targets_BxK, rng) -> (state, metrics)`` for a ready batch.
- Both steps expose ``step.jitted`` (the ``jax.jit`` object: ``.lower(...).compile()`` gives
  the compiled step and its ``memory_analysis()``).

metrics: float32/int32 scalars ``loss, contrastive, mse, grad_norm`` (global norm before
clipping), ``skipped`` (total so far), ``ok`` (this step applied), and ``lr`` when a schedule is
given (the rate this step used).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from csa_jax.core.affinity import training_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.errors import InputError
from csa_jax.core.losses import csa_loss
from csa_jax.train.optim import optimizer_steps
from csa_jax.core.forward import init_params, training_outputs

AXIS = "data"


class TrainState(NamedTuple):
  step: jax.Array  # int32: batches consumed so far (applied or skipped)
  params: Any
  opt_state: Any


def make_mesh(devices=None) -> Mesh:
  """1-D mesh over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def put_replicated(tree, mesh: Mesh):
  """Host values (identical on every process) -> arrays replicated over the mesh.

  ``make_array_from_callback`` rather than ``device_put`` so it also works when the mesh spans
  devices of other processes.
  """
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, jax.device_get(tree))


def check_batch(global_batch: int, mesh: Mesh, source: str = "config") -> int:
  """Per-device batch; an ``InputError`` when the global batch does not divide evenly."""
  n = mesh.size
  if global_batch < 1 or global_batch % n:
    raise InputError(f"{source}: train.global_batch: expected a positive multiple of the {n} "
                     f"devices (per-device batch = global / devices), found {global_batch}")
  return global_batch // n


def init_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array,
               mesh: Mesh, compiler_options: dict | None = None) -> TrainState:
  """Fresh parameters (docs/method.md section 3) and optimizer state, replicated over ``mesh``.

  One jitted program (not op-by-op), computed identically by every process.
  """
  def init(key):
    params = init_params(model_cfg, key)
    return TrainState(jnp.zeros([], jnp.int32), params, tx.init(params))
  return jax.jit(init, out_shardings=replicated(mesh), compiler_options=compiler_options)(rng)


def _loss_fn(params, aff_BxKxL, targets_BxK, rng, cfg, alpha):
  logits_BxK, mse = training_outputs(params, aff_BxKxL, cfg, rng)
  return csa_loss(logits_BxK, targets_BxK, mse, alpha)


def _apply(state: TrainState, aff_BxKxL, targets_BxK, rng, *, cfg, tx, alpha, schedule):
  (loss, parts), grads = jax.value_and_grad(_loss_fn, has_aux=True)(
      state.params, aff_BxKxL, targets_BxK, rng, cfg, alpha)
  updates, opt_state = tx.update(grads, state.opt_state, state.params, loss=loss)
  new_params = optax.apply_updates(state.params, updates)
  ok = opt_state.last_ok
  # Bitwise untouched on a skip (p + 0 would turn -0.0 into +0.0).
  params = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_params, state.params)
  metrics = {"loss": loss, "contrastive": parts["contrastive"], "mse": parts["mse"],
             "grad_norm": optax.tree.norm(grads), "skipped": opt_state.skipped, "ok": ok}
  if schedule is not None:
    metrics["lr"] = schedule(optimizer_steps(state.opt_state))
  return TrainState(state.step + 1, params, opt_state), metrics


def make_batch_train_step(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                          alpha: float, schedule: Callable | None = None,
                          compiler_options: dict | None = None):
  """``step(state, aff_BxKxL, targets_BxK, rng) -> (state, metrics)`` on a ready batch.

  aff and targets: global arrays (or host arrays, then placed) with B divisible by the devices.
  ``state`` is donated: do not reuse it after the call. compiler_options: passed to ``jax.jit``
  (tests use ``{"xla_backend_optimization_level": 0}`` to compile 3x faster).
  """
  rep, bat = replicated(mesh), batch_sharding(mesh)

  def fn(state, aff, targets, rng):
    aff = jax.lax.with_sharding_constraint(aff, bat)
    return _apply(state, aff, targets, rng, cfg=model_cfg, tx=tx, alpha=alpha,
                  schedule=schedule)

  jitted = jax.jit(fn, in_shardings=(rep, bat, bat, rep), out_shardings=(rep, rep),
                   donate_argnums=(0,), compiler_options=compiler_options)

  def step(state, aff_BxKxL, targets_BxK, rng):
    check_batch(aff_BxKxL.shape[0], mesh, source="batch")
    return jitted(state, aff_BxKxL, targets_BxK, rng)

  step.jitted = jitted
  return step


def make_train_step(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                    alpha: float, K: int, L: int, schedule: Callable | None = None,
                    compiler_options: dict | None = None):
  """``step(state, train_arrays, idx_B, rng) -> (state, metrics)``.

  train_arrays: (feats_NxC float32, nbrs_NxM int32, clusters_N int32), replicated
  (``put_replicated``); idx_B: the global batch of sample indices, sharded on ``'data'``
  (``global_batch_array``); rng: this step's dropout key. Sample i's affinity (K, L) and targets
  (K,) are built on device (``training_affinity``). ``state`` is donated. compiler_options:
  as in ``make_batch_train_step``.
  """
  if L != model_cfg.anchors:
    raise InputError(f"config: data.L: expected the model's anchors ({model_cfg.anchors}), "
                     f"found {L}")
  rep, bat = replicated(mesh), batch_sharding(mesh)

  def fn(state, train_arrays, idx_B, rng):
    feats, nbrs, clusters = train_arrays
    aff, targets = training_affinity(feats, nbrs, clusters, idx_B, K, L)
    aff = jax.lax.with_sharding_constraint(aff, bat)
    targets = jax.lax.with_sharding_constraint(targets, bat)
    return _apply(state, aff, targets, rng, cfg=model_cfg, tx=tx, alpha=alpha,
                  schedule=schedule)

  jitted = jax.jit(fn, in_shardings=(rep, rep, bat, rep), out_shardings=(rep, rep),
                   donate_argnums=(0,), compiler_options=compiler_options)

  def step(state, train_arrays, idx_B, rng):
    check_batch(idx_B.shape[0], mesh, source="batch")
    return jitted(state, train_arrays, idx_B, rng)

  step.jitted = jitted
  return step


def global_batch_array(local_idx, mesh: Mesh, global_batch: int) -> jax.Array:
  """This process's slice of the batch indices -> the global, ``'data'``-sharded array.

  Each process passes its own contiguous slice (``pipeline.batch_indices`` with its process
  index); with one process, the whole batch.
  """
  local_idx = np.asarray(local_idx, np.int32)
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local_idx,
                                                (global_batch,))
