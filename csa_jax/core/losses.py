"""The CSA objective (docs/method.md section 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def contrastive_loss(logits_BxN: jax.Array, targets_BxN: jax.Array) -> jax.Array:
  """The contrastive term (docs/method.md section 4): mean_b -log(sum_j e_bj y_bj / sum_j e_bj).

  Computed with e = exp(logits) as a difference of logsumexps in float32, so large logits (small
  temperatures) cannot overflow.

  Args:
    logits_BxN: z_0 . z_j / t for j = 0..N-1.
    targets_BxN: 1 for positives, 0 otherwise.

  Returns:
    A float32 scalar; +inf for a row without any positive.
  """
  logits = logits_BxN.astype(jnp.float32)
  pos = targets_BxN > 0
  lse_all = jax.nn.logsumexp(logits, axis=-1)
  lse_pos = jax.nn.logsumexp(jnp.where(pos, logits, -jnp.inf), axis=-1)
  return jnp.mean(lse_all - lse_pos)


def csa_loss(logits_BxN: jax.Array, targets_BxN: jax.Array, mse: jax.Array, alpha: float = 0.2):
  """The CSA objective (docs/method.md section 4): contrastive + alpha * mse.

  Args:
    logits_BxN: z_0 . z_j / t for j = 0..N-1 (``training_outputs``).
    targets_BxN: 1 where token j shares the query's cluster; target 0 must be 1 (otherwise a row
      with no positive is +inf, and the training step skips it as non-finite, like the original).
    mse: the feature-alignment distance (``training_outputs``).
    alpha: the MSE term's weight.

  Returns:
    (loss, {'contrastive': ..., 'mse': ...}), all float32 scalars.
  """
  con = contrastive_loss(logits_BxN, targets_BxN)
  mse = jnp.asarray(mse, jnp.float32)
  return con + alpha * mse, {"contrastive": con, "mse": mse}
