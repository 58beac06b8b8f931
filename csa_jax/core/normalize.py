"""The one L2 normaliser, for descriptors on the host and features on the device."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

EPS = 1e-12  # torch.nn.functional.normalize's default: an all-zero row stays zero
# A descriptor whose L2 norm is off 1 by more than this is re-normalised (with a warning) by every
# reader and host driver.
NORM_TOL = 1e-3


def row_norms(x_NxC: np.ndarray) -> np.ndarray:
  """The L2 norm of each row, computed in float64 (a finite float32 row's squares neither
  overflow nor underflow); NaN where a row holds NaN or inf.

  Args:
    x_NxC: a numpy array or memmap of rows.

  Returns:
    norms_N, float64.
  """
  return np.sqrt(np.einsum("ij,ij->i", x_NxC, x_NxC, dtype=np.float64))


def l2_normalize(x, axis: int = -1, eps: float = EPS):
  """``x / max(||x||, eps)`` along ``axis`` in float32, as ``torch.nn.functional.normalize``.

  Args:
    x: a numpy array (descriptors on the host) or a jax array / tracer (inside jitted code).
    axis: the axis whose norm becomes 1 (the descriptor or feature axis).
    eps: the smallest norm divided by.

  Returns:
    float32 array of ``x``'s shape and kind (numpy in, numpy out). Numpy norms are computed in
    float64, so finite rows whose float32 norm would overflow (near 3e38) keep their direction.
  """
  if isinstance(x, np.ndarray) or np.isscalar(x):
    x64 = np.asarray(x, np.float64)
    norm = np.sqrt(np.einsum("...i,...i->...", np.moveaxis(x64, axis, -1),
                             np.moveaxis(x64, axis, -1)))
    return (x64 / np.maximum(np.expand_dims(norm, axis), eps)).astype(np.float32)
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)
