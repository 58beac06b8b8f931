"""Dropout keep-masks from 16 random bits per element (docs/method.md section 3).

Every dropout of the model (inputs, activations, attention probabilities) draws its mask here.
One 32-bit threefry word gives two elements their 16-bit uniforms, halving the random-bit work,
which is a large share of a CPU training step (the attention probabilities alone are B x H x N x N
draws per layer, drawn again by the chunked attention's backward pass). The keep probability is
``(1 - rate)`` rounded to a multiple of 2^-16 (rate 0.1 keeps with probability 0.899994) and kept
values are scaled by the inverse of that rounded probability, so the expected output equals the
input exactly, as in standard dropout. The bits come from ``jax.random.bits`` with the same key
handling as every other draw (partitionable threefry: the mask does not depend on how the batch
is sharded).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_LEVELS = 1 << 16


def keep_mask(rng: jax.Array, rate: float, shape) -> tuple[jax.Array, float]:
  """Which elements a dropout of ``rate`` keeps, and the scale of the kept ones.

  Args:
    rng: a PRNG key.
    rate: the drop probability, in (0, 1).
    shape: the mask's shape (at least one dimension).

  Returns:
    ``(keep, scale)``: a bool array of ``shape``, True with probability ``threshold / 2^16``
    where ``threshold = round((1 - rate) * 2^16)``, and ``2^16 / threshold``.
  """
  threshold = min(_LEVELS - 1, max(1, round((1.0 - rate) * _LEVELS)))
  *lead, last = shape
  words = jax.random.bits(rng, (*lead, (last + 1) // 2), jnp.uint32)
  u16 = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(*lead, -1)[..., :last]
  return u16 < threshold, _LEVELS / threshold


def dropout(x: jax.Array, rng: jax.Array, rate: float) -> jax.Array:
  """``x`` with elements dropped at ``rate`` and the kept ones rescaled (``keep_mask``).

  Args:
    x: any array.
    rng: a PRNG key.
    rate: the drop probability; 0 returns ``x``.

  Returns:
    An array like ``x``.
  """
  if rate == 0.0:
    return x
  keep, scale = keep_mask(rng, rate, x.shape)
  return jnp.where(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
  """``dropout`` as a Flax module drawing from the 'dropout' rng stream."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    return dropout(x, self.make_rng("dropout"), self.rate)
