"""The one L2 normaliser and the row norms every reader checks descriptors with."""

import jax.numpy as jnp
import numpy as np
import pytest

from csa_jax.core.normalize import EPS, l2_normalize, row_norms


def test_l2_normalize_by_hand_on_numpy_and_jax():
  x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]], np.float32)
  want = np.array([[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], np.float32)  # zero stays zero (eps)
  got = l2_normalize(x)
  assert isinstance(got, np.ndarray) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-7)
  np.testing.assert_allclose(np.asarray(l2_normalize(jnp.asarray(x))), want, rtol=1e-6)
  np.testing.assert_allclose(l2_normalize(x.T, axis=0), want.T, rtol=1e-7)
  np.testing.assert_array_equal(x, [[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])  # input untouched


def test_huge_and_tiny_rows_keep_their_direction_on_the_host():
  big = np.array([[3e38, 4e38 / 2]], np.float32)  # float32 squares overflow
  tiny = np.array([[3e-30, 4e-30]], np.float32)  # float32 squares underflow to 0
  np.testing.assert_allclose(l2_normalize(big), [[3 / np.hypot(3, 2), 2 / np.hypot(3, 2)]],
                             rtol=1e-6)
  # Below eps a row is divided by eps, as torch.nn.functional.normalize does.
  np.testing.assert_allclose(l2_normalize(tiny), tiny / EPS, rtol=1e-6)
  np.testing.assert_allclose(l2_normalize(tiny, eps=1e-300), [[0.6, 0.8]], rtol=1e-6)


def test_row_norms_in_float64():
  x = np.array([[3e38, 4e38 / 2], [1e-30, 0], [np.nan, 1], [0, 0]], np.float32)
  got = row_norms(x)
  assert got.dtype == np.float64
  np.testing.assert_allclose(got[:2], [np.hypot(3e38, 2e38), 1e-30], rtol=1e-6)
  assert np.isnan(got[2]) and got[3] == 0
  with pytest.raises(ValueError):
    row_norms(np.ones(3, np.float32))  # rows only
