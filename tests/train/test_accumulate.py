"""Gradient accumulation: the split keeps each row on its device; the mean is the documented one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csa_jax import parallel
from csa_jax.train import accumulate

B = 32
COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce")


def test_split_keeps_each_devices_rows_on_that_device_and_covers_the_batch():
  mesh = parallel.make_mesh(jax.devices()[:8])
  x_Bx3 = jax.device_put(np.arange(B * 3, dtype=np.float32).reshape(B, 3),
                         parallel.batch_sharding(mesh))
  split = jax.jit(lambda t: accumulate.split_microbatches(t, 4, mesh))
  hlo = split.lower(x_Bx3).compile().as_text()
  assert not [op for op in COLLECTIVES if op in hlo], "the split must stay on each device"
  parts = split(x_Bx3)
  assert parts.shape == (4, B // 4, 3)
  got = np.asarray(parts)
  # Microbatch i is rows i, i + 4, ...: together they are the batch, each row once.
  for i in range(4):
    np.testing.assert_array_equal(got[i], np.asarray(x_Bx3)[i::4])
  own = {s.device: set(np.asarray(s.data)[:, 0].tolist()) for s in x_Bx3.addressable_shards}
  for s in parts.addressable_shards:
    rows = np.asarray(s.data)[..., 0]
    assert rows.shape == (4, 1)  # every microbatch spread over all 8 devices
    assert set(rows.ravel().tolist()) == own[s.device]


def _toy_value_and_grad(params, batch, key):
  """A per-sample-mean loss with a key-dependent term, like dropout."""
  x_Bx2, y_B = batch
  noise_B = jax.random.normal(key, y_B.shape)

  def loss_fn(w):
    err_B = x_Bx2 @ w - y_B + 0.1 * noise_B
    return jnp.mean(err_B**2), {"abs": jnp.mean(jnp.abs(err_B))}
  return jax.value_and_grad(loss_fn, has_aux=True)(params)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_mean_is_the_equal_weight_mean_of_microbatches_with_folded_keys(m):
  mesh = parallel.make_mesh(jax.devices()[:2])
  rng = np.random.default_rng(0)
  batch = (rng.normal(size=(B, 2)).astype(np.float32), rng.normal(size=B).astype(np.float32))
  w = jnp.array([0.3, -0.2])
  key = jax.random.key(5)
  (loss, aux), g = jax.jit(lambda p, b, k: accumulate.mean_value_and_grad(
      _toy_value_and_grad, p, b, k, m, mesh))(w, batch, key)
  if m == 1:  # no scan: the plain call, its key unchanged
    want = [_toy_value_and_grad(w, batch, key)]
  else:
    want = [_toy_value_and_grad(w, (batch[0][i::m], batch[1][i::m]), jax.random.fold_in(key, i))
            for i in range(m)]
  np.testing.assert_allclose(loss, np.mean([o[0][0] for o in want]), rtol=1e-6)
  np.testing.assert_allclose(aux["abs"], np.mean([o[0][1]["abs"] for o in want]), rtol=1e-6)
  np.testing.assert_allclose(g, np.mean([o[1] for o in want], axis=0), rtol=1e-5, atol=1e-7)
