"""softmax(q k^T) v of the re-ranker's attention layers, three ways (docs/method.md section 3).

Every implementation takes the same unscaled queries, keys and values and a ``scale`` (None:
d**-0.5, as ``jax.nn.dot_product_attention``), computes softmax(scale * q k^T) v and applies the
scale to q (N x d products, not N x N); they differ in memory traffic:

- ``xla_attention``: two einsums and a softmax; the (B, H, N, N) logits live in memory. Fast on
  accelerators, where XLA fuses it well; on CPU the N x N tensors of all heads fall out of cache.
- ``chunked_attention``: one head and one block of queries at a time against blocks of keys, with
  a running max and sum (the online softmax of flash attention), so no N x N tensor is ever
  materialised; its VJP recomputes the blocks instead of storing the probabilities.
- ``dot_product_attention``: ``jax.nn.dot_product_attention``, whose ``implementation="cudnn"``
  is cuDNN's fused kernel on NVIDIA GPUs.

``resolve`` turns ``ModelConfig.attention`` into one of them for a backend and a shape.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from csa_jax.core.chunked_attention import chunked_attention
from csa_jax.core.config import ModelConfig

F32 = jnp.float32
log = logging.getLogger(__name__)

__all__ = ["chunked_attention", "dot_product_attention", "resolve", "xla_attention"]


def resolve(cfg: ModelConfig, backend: str, dropout: bool) -> str:
  """The implementation ``cfg.attention`` stands for on ``backend``.

  "auto" follows the measurements in docs/benchmarks.md: on CPU the chunked form (one head's blocks
  stay in cache: 1.6-1.8x faster than XLA's for one K=1024 layer, forward and backward); on
  accelerators XLA's fusion, the one measured there so far. "cudnn" needs an NVIDIA GPU,
  bfloat16 and no attention dropout (the fused kernel has no dropout mask shared with the other
  forms); anywhere else it means "xla".

  Args:
    cfg: the model.
    backend: ``jax.default_backend()`` (or the platform of the arrays' devices).
    dropout: whether attention dropout is active in this call (training with attn_drop > 0).

  Returns:
    "xla", "chunked" or "cudnn".
  """
  choice = cfg.attention
  if choice == "auto":
    return "chunked" if backend == "cpu" else "xla"
  if choice == "cudnn" and (backend not in ("gpu", "cuda") or cfg.dtype != "bfloat16" or dropout):
    return "xla"
  return choice


def _scaled(q, scale: float | None):
  """q times scale (None: d**-0.5) in q's dtype; 1.0 leaves q as it is."""
  scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
  return q if scale == 1.0 else q * jnp.asarray(scale, q.dtype)


def xla_attention(q_BxHxNxd, k_BxHxNxd, v_BxHxNxd, drop=None, *, scale: float | None = None):
  """softmax(scale * q k^T) v with the logits in memory.

  Args:
    q_BxHxNxd: queries, unscaled.
    k_BxHxNxd: keys.
    v_BxHxNxd: values.
    drop: optional ``probs -> probs`` applied to the float32 probabilities (attention dropout).
    scale: the logits' factor; None means d**-0.5, 1.0 suits queries already scaled.

  Returns:
    out_BxHxNxd in v's dtype.
  """
  logits = jnp.einsum("bhqd,bhkd->bhqk", _scaled(q_BxHxNxd, scale), k_BxHxNxd,
                      preferred_element_type=F32)
  probs = jax.nn.softmax(logits, axis=-1)
  if drop is not None:
    probs = drop(probs)
  return jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v_BxHxNxd.dtype), v_BxHxNxd)


def dot_product_attention(q_BxNxHxd, k_BxNxHxd, v_BxNxHxd, implementation: str | None = "cudnn",
                          *, scale: float | None = None):
  """``jax.nn.dot_product_attention`` on the (B, N, H, d) layout it wants.

  If the requested implementation rejects these arguments (an old cuDNN, an unsupported shape),
  XLA's is used and a warning logged: a re-ranker that runs beats one that stops.

  Args:
    q_BxNxHxd: queries, unscaled.
    k_BxNxHxd: keys.
    v_BxNxHxd: values.
    implementation: "cudnn", "xla" or None (JAX picks).
    scale: the logits' factor; None means d**-0.5 (passed on: the kernel applies it).

  Returns:
    out_BxNxHxd in v's dtype.
  """
  call = functools.partial(jax.nn.dot_product_attention, q_BxNxHxd, k_BxNxHxd, v_BxNxHxd,
                           scale=scale)
  try:
    return call(implementation=implementation)
  except (ValueError, NotImplementedError, RuntimeError) as e:
    log.warning("attention: implementation %r unavailable here (%s); using XLA's", implementation,
                str(e).splitlines()[0] if str(e) else type(e).__name__)
    return call(implementation="xla")
