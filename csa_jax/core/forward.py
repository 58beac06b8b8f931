"""Pure, jit-compiled entry points of the re-ranker (docs/method.md sections 1 and 3).

Parameters are the plain pytree ``{'topk_proj': ..., 'blocks_0': ..., 'feature_align': ...}``
(the Flax ``params`` collection); ``cfg`` is a static, hashable ``ModelConfig``.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp

from csa_jax.core.config import ModelConfig
from csa_jax.core.model import l2_normalize, model_for

F32 = jnp.float32

# Incremented only while JAX traces, so tests can prove one compilation per shape.
TRACE_COUNTS: collections.Counter = collections.Counter()


def init_params(cfg: ModelConfig, rng: jax.Array, tokens: int = 2) -> dict:
  """Fresh parameters per docs/method.md section 3 (normal(0.02) weights, zero biases, unit LayerNorm)."""
  x = jnp.zeros((1, tokens, cfg.anchors), F32)
  return model_for(cfg).init(rng, x, align=True)["params"]


@functools.partial(jax.jit, static_argnames="cfg")
def rerank_scores(params, aff_BxNxL: jax.Array, cfg: ModelConfig) -> jax.Array:
  """New scores of tokens 1..N-1: s_j = z_0 . z_j (cosine), float32 (B, N-1).

  aff_BxNxL: affinity features, token 0 the query (see ``rerank_affinity``).
  """
  TRACE_COUNTS["rerank_scores"] += 1

  def scores(aff):
    z = model_for(cfg).apply({"params": params}, aff, train=False)
    return jnp.einsum("bd,bnd->bn", z[:, 0], z[:, 1:], precision="highest")

  if jax.default_backend() == "cpu" and aff_BxNxL.shape[0] > 1:
    # One query at a time keeps its (H, N, N) attention (50 MB at K=1024) in cache; on CPU that
    # beats the batched matmuls (measured in tools/README.md, csa-jax bench).
    return jax.lax.map(lambda a: scores(a[None])[0], aff_BxNxL)
  return scores(aff_BxNxL)


def _training_outputs(params, aff_BxNxL, cfg: ModelConfig, rng):
  train = rng is not None
  rngs = {"dropout": rng} if train else {}
  z, a = model_for(cfg).apply({"params": params}, aff_BxNxL, train=train, align=True, rngs=rngs)
  logits_BxN = jnp.einsum("bd,bnd->bn", z[:, 0], z, precision="highest") / cfg.temperature
  # MSE term compares with the affinity *before* dropout (docs/method.md section 3).
  diff = l2_normalize(aff_BxNxL) - l2_normalize(a)
  r_BxN = jnp.sqrt(jnp.clip(jnp.sum(diff * diff, axis=-1), 1e-4, 1e4))
  return logits_BxN, jnp.mean(r_BxN)


@functools.partial(jax.jit, static_argnames="cfg")
def training_outputs(params, aff_BxNxL: jax.Array, cfg: ModelConfig, rng=None):
  """What the training objective needs: ``(logits_BxN, mse)``.

  logits_BxN = z_0 . z_j / t for j = 0..N-1 (token 0 included), so exp(logits) is the original
  model's ``exp_sim``. mse is the scalar feature-alignment distance (mean over B and N).
  rng: a PRNG key turns on training mode (dropout, attention dropout, drop-path); None is eval.
  """
  TRACE_COUNTS["training_outputs"] += 1
  return _training_outputs(params, aff_BxNxL, cfg, rng)
