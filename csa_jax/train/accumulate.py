"""Gradient accumulation: the global batch's mean loss and gradient, one microbatch at a time.

``train.microbatches = m`` splits every device's shard of the batch into m equal microbatches and
runs forward + backward on them in a ``jax.lax.scan``, so only one microbatch's activations are
alive at a time (the step's temporaries shrink by about m) while the optimizer still sees one
update per global batch. The CSA loss is a per-sample mean (contrastive: mean over rows; mse: mean
over B and N, ``core.losses``), so the equal-weight mean of the m microbatch means is the
global-batch mean, and so are its parts and gradient: m = 1, 2, 4 compute the same step up to
float32 rounding.

Dropout: microbatch i draws its masks from ``jax.random.fold_in(rng, i)``, so with m > 1 the masks
differ from those of m = 1 (same distribution, same expected gradient; not bitwise the same
step). m = 1 runs no scan and uses ``rng`` itself: exactly the step without accumulation.

Sharding: microbatch i is rows i, i + m, i + 2m, ... of the global batch. Each device's contiguous
shard holds a multiple of m rows, so the split ``(B, ...) -> (m, B/m, ...)`` is a local reshape
on every device (no gather) and each microbatch is itself spread over all devices. The gradient
all-reduce then runs once per microbatch (XLA partitions each scan iteration on its own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from csa_jax import parallel


def split_microbatches(tree: Any, microbatches: int, mesh: Mesh) -> Any:
  """Every leaf (B, ...) as (m, B/m, ...), microbatch i = rows i, i + m, i + 2m, ...

  Args:
    tree: a pytree of arrays whose leading axis is the global batch, sharded over the data axis,
      each device's shard a multiple of ``microbatches`` rows.
    microbatches: m.
    mesh: the training mesh.

  Returns:
    The same pytree, leaves (m, B/m, ...) with axis 1 sharded over the data axis.
  """
  m = microbatches
  sharding = NamedSharding(mesh, P(None, parallel.DATA_AXIS))

  def split(x_Bx):
    # Row-major (B/m, m): device d's contiguous rows stay on d, so both steps are local.
    x_Mx = jnp.swapaxes(x_Bx.reshape(x_Bx.shape[0] // m, m, *x_Bx.shape[1:]), 0, 1)
    return jax.lax.with_sharding_constraint(x_Mx, sharding)

  return jax.tree.map(split, tree)


def mean_value_and_grad(value_and_grad_fn: Callable, params: Any, batch: Any, rng: jax.Array,
                        microbatches: int, mesh: Mesh):
  """``value_and_grad_fn`` averaged over ``microbatches`` equal parts of ``batch``.

  Args:
    value_and_grad_fn: ``(params, batch, rng) -> ((loss, aux), grads)`` on a batch of any size,
      its loss and aux (a pytree of scalars) means over that batch.
    params: the parameters (replicated).
    batch: a pytree of arrays whose leading axis is the global batch (``split_microbatches``).
    rng: the step's dropout key; microbatch i uses ``fold_in(rng, i)`` (``rng`` itself if m = 1).
    microbatches: m >= 1, dividing every device's shard of the batch.
    mesh: the training mesh.

  Returns:
    ``((loss, aux), grads)``: the equal-weight means over the microbatches, float32 where the
    function's are; with m = 1 exactly ``value_and_grad_fn(params, batch, rng)``.
  """
  m = microbatches
  if m == 1:
    return value_and_grad_fn(params, batch, rng)
  parts = split_microbatches(batch, m, mesh)
  out_shape = jax.eval_shape(lambda p, b, r: value_and_grad_fn(p, b, r), params,
                             jax.tree.map(lambda x: x[0], parts), rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
  # The sum stays replicated like the parameters: each iteration's gradient is reduced over the
  # devices before it is added, so no device holds more than one microbatch's activations.
  zeros = jax.lax.with_sharding_constraint(zeros, parallel.replicated(mesh))

  def body(total, xs):
    i, part = xs
    out = value_and_grad_fn(params, part, jax.random.fold_in(rng, i))
    return jax.tree.map(jnp.add, total, out), None

  total, _ = jax.lax.scan(body, zeros, (jnp.arange(m, dtype=jnp.int32), parts))
  return jax.tree.map(lambda t: t / m, total)
