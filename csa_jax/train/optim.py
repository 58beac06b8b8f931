"""The original CSA optimizer in optax (docs/method.md section 5).

PyTorch's ``SGD(momentum=0.9, weight_decay=wd)`` on the decayed parameter group is, per step,
``g += wd * p; buf = mu * buf + g; p -= lr * buf``. optax's ``trace`` is exactly that momentum
form (not the dampened one), so the chain is: optional clipping (the original clips the raw
gradient before SGD adds decay), coupled decay masked to the weight matrices, trace, -lr.
The learning rate follows the original ``WarmupCos_Scheduler`` table, one value per optimizer
step; a step skipped for a non-finite loss is not an optimizer step and does not advance it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def warmup_cosine(warmup_lr: float, base_lr: float, final_lr: float, warmup_steps: int,
                  total_steps: int):
  """The original schedule as a function of the 0-based optimizer step t.

  t < W: ``np.linspace(warmup_lr, base_lr, W)[t]`` (both ends included);
  W <= t < T: ``final + (base - final) * (1 + cos(pi * (t - W) / (T - W))) / 2``;
  t >= T: the last value of that table (the original would index past its end).
  """
  warmup_steps, total_steps = int(warmup_steps), int(total_steps)
  if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"warmup_cosine: need 0 <= warmup_steps ({warmup_steps}) <= total_steps "
                     f"({total_steps}) and total_steps >= 1")
  decay_steps = total_steps - warmup_steps
  last = (final_lr + 0.5 * (base_lr - final_lr) * (1 + np.cos(np.pi * (decay_steps - 1)
                                                              / decay_steps))
          if decay_steps else base_lr)

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    frac = t / max(warmup_steps - 1, 1)
    warm = warmup_lr + (base_lr - warmup_lr) * jnp.minimum(frac, 1.0)
    d = jnp.maximum(t - warmup_steps, 0.0) / max(decay_steps, 1)
    cos = final_lr + 0.5 * (base_lr - final_lr) * (1.0 + jnp.cos(jnp.pi * d))
    lr = jnp.where(t < warmup_steps, warm, cos)
    return jnp.where(t >= total_steps, last, lr).astype(jnp.float32)

  return schedule


def decay_mask(params):
  """True for leaves that get weight decay: weight matrices (ndim > 1) that are not biases.

  The original's ``add_weight_decay`` skips every 1-D parameter (LayerNorm scale and bias) and
  every ``.bias``; in this model that leaves exactly the Linear kernels.
  """
  def keep(path, x):
    name = getattr(path[-1], "key", getattr(path[-1], "name", str(path[-1])))
    return bool(np.ndim(x) > 1 and name != "bias")
  return jax.tree_util.tree_map_with_path(keep, params)


class SkipState(NamedTuple):
  """``apply_if_finite``'s state: how many updates were skipped, the wrapped state, the flag."""
  skipped: jax.Array  # int32, total skipped updates
  last_ok: jax.Array  # bool, whether the latest update was applied
  inner_state: optax.OptState


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Drops an update whose gradient, ``loss=`` extra argument or result is not finite.

  A skipped update returns zeros and leaves the inner state (momentum, schedule count) bitwise
  unchanged, like the original's ``continue`` on a non-finite loss; unlike
  ``optax.apply_if_finite`` it never gives up and accepts a bad step, and it also checks the loss
  (a finite gradient of a +inf loss must not be applied either), and, given ``params``, the
  parameters the update would produce: no step ever writes NaN/inf into the model.
  """
  def init(params):
    return SkipState(jnp.zeros([], jnp.int32), jnp.array(True), inner.init(params))

  def update(updates, state, params=None, *, loss=None, **extra):
    del extra
    ok = _all_finite(updates)
    if loss is not None:
      ok = ok & jnp.isfinite(loss)
    new_updates, new_inner = inner.update(updates, state.inner_state, params)
    if params is not None:
      # A finite gradient times a huge learning rate can still overflow the parameters.
      ok = ok & _all_finite(optax.apply_updates(params, new_updates))
    pick = lambda new, old: jnp.where(ok, new, old)
    new_inner = jax.tree.map(pick, new_inner, state.inner_state)
    new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
    return new_updates, SkipState(state.skipped + (~ok).astype(jnp.int32), ok, new_inner)

  return optax.GradientTransformationExtraArgs(init, update)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_optimizer(*, base_lr: float, warmup_lr: float, final_lr: float, warmup_steps: int,
                   total_steps: int, momentum: float = 0.9, weight_decay: float = 1e-6,
                   clip_norm: float = 0.0) -> optax.GradientTransformationExtraArgs:
  """SGD of the original recipe (docs/method.md section 5), skipping non-finite steps.

  Args:
    base_lr: the peak learning rate.
    warmup_lr: the rate the linear warm-up starts from.
    final_lr: the rate the cosine decay ends at.
    warmup_steps: optimizer steps of warm-up.
    total_steps: optimizer steps of the whole run.
    momentum: SGD momentum (PyTorch's form).
    weight_decay: coupled decay of the weight matrices (``decay_mask``).
    clip_norm: > 0 clips the global gradient norm first (off in the original scripts).

  Returns:
    The transformation; call ``tx.update(grads, state, params, loss=loss)``. Its state is a
    ``SkipState``: ``state.skipped`` counts skipped steps, ``optimizer_steps(state)`` the applied
    ones.
  """
  schedule = warmup_cosine(warmup_lr, base_lr, final_lr, warmup_steps, total_steps)
  parts = []
  if clip_norm and clip_norm > 0:
    parts.append(optax.clip_by_global_norm(clip_norm))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
  parts += [optax.trace(decay=momentum, nesterov=False), optax.scale_by_learning_rate(schedule)]
  return skip_nonfinite(optax.chain(*parts))


def optimizer_from_config(train_cfg, steps_per_epoch: int):
  """``make_optimizer`` from a config's ``train`` group (epochs turned into steps)."""
  return make_optimizer(
      base_lr=train_cfg.base_lr, warmup_lr=train_cfg.warmup_lr, final_lr=train_cfg.final_lr,
      warmup_steps=train_cfg.warmup_epochs * steps_per_epoch,
      total_steps=train_cfg.epochs * steps_per_epoch, momentum=train_cfg.momentum,
      weight_decay=train_cfg.weight_decay, clip_norm=train_cfg.clip_norm)


def schedule_from_config(train_cfg, steps_per_epoch: int):
  """The learning-rate schedule ``optimizer_from_config`` uses, to report each step's rate."""
  return warmup_cosine(train_cfg.warmup_lr, train_cfg.base_lr, train_cfg.final_lr,
                       train_cfg.warmup_epochs * steps_per_epoch,
                       train_cfg.epochs * steps_per_epoch)


def optimizer_steps(state: SkipState) -> jax.Array:
  """Number of applied (not skipped) updates: the schedule's position."""
  counts = [s.count for s in jax.tree.leaves(state.inner_state, is_leaf=_is_count_state)
            if _is_count_state(s)]
  return counts[0]


def _is_count_state(x) -> bool:
  return isinstance(x, optax.ScaleByScheduleState)
