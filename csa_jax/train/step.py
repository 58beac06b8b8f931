"""One data-parallel training step (docs/method.md sections 2, 4, 5).

The global batch is sharded over the ``parallel.DATA_AXIS`` mesh of all devices (of all
processes); parameters and optimizer state are replicated and donated. Written for the global
batch (XLA's partitioner inserts the gradient all-reduce), so the loss is the mean over the global
batch and 1 or 8 devices, 1 or 2 processes, compute the same step. Dropout keys use JAX's
partitionable threefry, so the masks do not depend on the sharding either.

``microbatches = m > 1`` accumulates the gradient over m microbatches of every device's shard
(``accumulate``: one microbatch's activations alive at a time, the same mean loss and gradient,
one optimizer update); the dropout masks then differ from m = 1's, their distribution does not.

Two entry points build the same step and differ only in where the batch comes from:
``make_train_step`` builds affinities and targets on device from sample indices (what
``csa-jax train`` runs); ``make_batch_train_step`` takes a ready (aff, targets) batch (the
benchmarks). Both return ``step(state, a, b, rng) -> (state, metrics)`` with ``step.jitted``,
the ``jax.jit`` object (``.lower(...).compile()`` gives the compiled step and its
``memory_analysis()``).

metrics: float32/int32 scalars ``loss, contrastive, mse, grad_norm`` (global norm of the batch's
mean gradient, accumulated over the microbatches, before clipping), ``skipped`` (total so far),
``ok`` (this step applied), and ``lr`` when a schedule is given (the rate this step used).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from csa_jax import parallel
from csa_jax.core.affinity import training_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import init_params, training_outputs
from csa_jax.core.losses import csa_loss
from csa_jax.errors import InputError
from csa_jax.train import accumulate
from csa_jax.train.optim import optimizer_steps


class TrainState(NamedTuple):
  step: jax.Array  # int32: batches consumed so far (applied or skipped)
  params: Any
  opt_state: Any


def check_batch(global_batch: int, mesh: Mesh, source: str = "config") -> int:
  """The per-device batch of ``global_batch`` split over ``mesh``.

  Args:
    global_batch: samples per step, over all devices.
    mesh: the training mesh.
    source: what the error line names as the origin of ``global_batch``.

  Returns:
    ``global_batch // mesh.size``.

  Raises:
    InputError: the global batch does not divide evenly over the devices.
  """
  n = mesh.size
  if global_batch < 1 or global_batch % n:
    raise InputError(f"{source}: train.global_batch: expected a positive multiple of the {n} "
                     f"devices (per-device batch = global / devices), found {global_batch}")
  return global_batch // n


def check_microbatches(global_batch: int, microbatches: int, mesh: Mesh,
                       source: str = "config") -> int:
  """The microbatch size on each device when ``global_batch`` is split into ``microbatches``.

  Args:
    global_batch: samples per step, over all devices.
    microbatches: parts each device's batch is split into (``train.microbatches``).
    mesh: the training mesh.
    source: what the error line names as the origin of the values.

  Returns:
    ``global_batch // mesh.size // microbatches``.

  Raises:
    InputError: ``microbatches`` is not a positive integer dividing the per-device batch (or the
      global batch does not divide over the devices).
  """
  per_device = check_batch(global_batch, mesh, source)
  _check_microbatches_type(microbatches, source)
  if per_device % microbatches:
    raise InputError(f"{source}: train.microbatches: expected a divisor of the per-device batch "
                     f"{per_device} (train.global_batch {global_batch} / {mesh.size} devices), "
                     f"found {microbatches}")
  return per_device // microbatches


def _check_microbatches_type(microbatches, source: str) -> None:
  if (isinstance(microbatches, bool) or not isinstance(microbatches, (int, np.integer))
      or microbatches < 1):
    raise InputError(f"{source}: train.microbatches: expected an integer >= 1, found "
                     f"{microbatches!r}")


def init_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array,
               mesh: Mesh) -> TrainState:
  """Fresh parameters (docs/method.md section 3) and optimizer state, replicated over ``mesh``.

  One jitted program (not op-by-op), computed identically by every process.

  Args:
    model_cfg: the model.
    tx: the optimizer (``optim.make_optimizer``).
    rng: the parameters' PRNG key.
    mesh: the training mesh (``parallel.make_mesh``).

  Returns:
    A replicated ``TrainState`` at step 0.
  """
  def init(key):
    params = init_params(model_cfg, key)
    return TrainState(jnp.zeros([], jnp.int32), params, tx.init(params))
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(rng)


def _loss_fn(params, aff_BxKxL, targets_BxK, rng, cfg, alpha):
  logits_BxK, mse = training_outputs(params, aff_BxKxL, cfg, rng)
  return csa_loss(logits_BxK, targets_BxK, mse, alpha)


def _apply(state: TrainState, loss, parts, grads, *, tx, schedule):
  """One optimizer update from the batch's mean loss and gradient; skipped if not finite."""
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


def _make_step(model_cfg, tx, mesh, alpha, schedule, to_batch, a_sharding, microbatches):
  """The one step: ``to_batch(a, b) -> (aff_BxKxL, targets_BxK)``, loss and gradient, ``_apply``.

  ``b``'s leading axis is the global batch (sharded over the data axis); ``a`` is placed as
  ``a_sharding`` says, and split into microbatches with ``b`` when it is batch-sharded too.
  ``to_batch`` runs per microbatch, so affinities built on device exist one microbatch at a time.
  """
  _check_microbatches_type(microbatches, "train step")
  rep, bat = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  split_a = a_sharding == bat

  def fn(state, a, b, rng):
    def value_and_grad(params, batch, key):
      a_part, b_part = batch if split_a else (a, batch)
      aff, targets = to_batch(a_part, b_part)
      aff = jax.lax.with_sharding_constraint(aff, bat)
      targets = jax.lax.with_sharding_constraint(targets, bat)
      return jax.value_and_grad(_loss_fn, has_aux=True)(params, aff, targets, key, model_cfg,
                                                        alpha)

    (loss, parts), grads = accumulate.mean_value_and_grad(
        value_and_grad, state.params, (a, b) if split_a else b, rng, microbatches, mesh)
    return _apply(state, loss, parts, grads, tx=tx, schedule=schedule)

  jitted = jax.jit(fn, in_shardings=(rep, a_sharding, bat, rep), out_shardings=(rep, rep),
                   donate_argnums=(0,))

  def step(state, a, b, rng):
    check_microbatches(b.shape[0], microbatches, mesh, source="batch")
    return jitted(state, a, b, rng)

  step.jitted = jitted
  return step


def make_train_step(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                    alpha: float, K: int, L: int, schedule: Callable | None = None,
                    microbatches: int = 1):
  """The step ``csa-jax train`` runs: sample i's affinity (K, L) and targets (K,) built on device.

  Args:
    model_cfg: the model.
    tx: the optimizer (``optim.make_optimizer``).
    mesh: the training mesh (``parallel.make_mesh``).
    alpha: weight of the MSE term of the loss.
    K: tokens per sample.
    L: anchors per sample; must be the model's ``anchors``.
    schedule: the learning-rate schedule, to report each step's rate as ``metrics['lr']``.
    microbatches: accumulate the gradient over this many microbatches of each device's batch
      (``train.microbatches``; ``accumulate``); 1 computes the whole batch at once.

  Returns:
    ``step(state, train_arrays, idx_B, rng) -> (state, metrics)``. train_arrays: (feats_NxC
    float32, nbrs_NxM int32, clusters_N int32), replicated (``parallel.put_replicated``); idx_B:
    the global batch of sample indices, sharded (``global_batch_array``); rng: this step's
    dropout key. ``state`` is donated: do not reuse it after the call.
  """
  if L != model_cfg.anchors:
    raise InputError(f"config: model.anchors: expected the anchors per sample L = {L}, found "
                     f"{model_cfg.anchors}")

  def to_batch(train_arrays, idx_B):
    feats, nbrs, clusters = train_arrays
    return training_affinity(feats, nbrs, clusters, idx_B, K, L)

  return _make_step(model_cfg, tx, mesh, alpha, schedule, to_batch, parallel.replicated(mesh),
                    microbatches)


def make_batch_train_step(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                          alpha: float, schedule: Callable | None = None,
                          microbatches: int = 1):
  """The same step on a ready batch.

  Args:
    model_cfg, tx, mesh, alpha, schedule, microbatches: as for
      ``make_train_step``.

  Returns:
    ``step(state, aff_BxKxL, targets_BxK, rng) -> (state, metrics)``; aff and targets are global
    arrays (or host arrays, then placed) with B divisible by the devices times ``microbatches``.
    ``state`` is donated.
  """
  return _make_step(model_cfg, tx, mesh, alpha, schedule, lambda aff, targets: (aff, targets),
                    parallel.batch_sharding(mesh), microbatches)


def global_batch_array(local_idx, mesh: Mesh, global_batch: int) -> jax.Array:
  """This process's slice of the batch indices as the global, batch-sharded array.

  Args:
    local_idx: this process's contiguous slice (``train_set.batch_indices`` with its process
      index); with one process, the whole batch.
    mesh: the training mesh.
    global_batch: the size of the whole batch.

  Returns:
    int32 idx_B of shape (global_batch,), sharded over the data axis.
  """
  local_idx = np.asarray(local_idx, np.int32)
  return jax.make_array_from_process_local_data(parallel.batch_sharding(mesh), local_idx,
                                                (global_batch,))
