"""Dropout from 16 random bits per element: rate, scale and independence of the sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csa_jax import parallel
from csa_jax.core.dropout import dropout, keep_mask


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_rate_and_unbiased_scale(rate):
  keep, scale = keep_mask(jax.random.key(0), rate, (64, 1001))  # odd last axis
  keep = np.asarray(keep)
  assert keep.shape == (64, 1001) and keep.dtype == bool
  threshold = round((1 - rate) * 65536)
  assert scale == 65536 / threshold
  sd = np.sqrt(rate * (1 - rate) / keep.size)
  assert abs(keep.mean() - threshold / 65536) < 5 * sd
  out = np.asarray(dropout(jnp.ones((64, 1001)), jax.random.key(0), rate))
  np.testing.assert_array_equal(out != 0, keep)
  np.testing.assert_allclose(out[keep], scale)
  assert abs(out.mean() - 1.0) < 5 * sd * scale  # unbiased: E[out] = x


def test_rows_and_halves_of_a_word_are_not_copies():
  keep, _ = keep_mask(jax.random.key(1), 0.5, (4, 4096))
  keep = np.asarray(keep)
  assert not np.array_equal(keep[0], keep[1])
  assert not np.array_equal(keep[:, 0::2], keep[:, 1::2])  # the two 16-bit halves differ
  assert abs(np.mean(keep[:, 0::2] == keep[:, 1::2]) - 0.5) < 0.05


def test_rate_zero_is_identity_and_mask_ignores_sharding():
  x = jnp.arange(12.0).reshape(3, 4)
  assert dropout(x, jax.random.key(0), 0.0) is x
  mesh = parallel.make_mesh()
  fn = jax.jit(lambda k: keep_mask(k, 0.3, (8, 6, 10))[0],
               out_shardings=parallel.batch_sharding(mesh))
  sharded = np.asarray(fn(jax.random.key(2)))
  single = np.asarray(jax.jit(lambda k: keep_mask(k, 0.3, (8, 6, 10))[0])(jax.random.key(2)))
  np.testing.assert_array_equal(sharded, single)
