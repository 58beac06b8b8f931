"""Pure, jit-compiled entry points of the re-ranker (docs/method.md sections 1 and 3).

Parameters are the plain pytree ``{'topk_proj': ..., 'blocks_0': ..., 'feature_align': ...}``
(the Flax ``params`` collection); ``cfg`` is a static, hashable ``ModelConfig``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from csa_jax.core.config import ModelConfig
from csa_jax.core.model import model_for
from csa_jax.core.normalize import l2_normalize

F32 = jnp.float32


def init_params(cfg: ModelConfig, rng: jax.Array, tokens: int = 2) -> dict:
  """Fresh parameters (docs/method.md section 3).

  Args:
    cfg: the model.
    rng: a PRNG key.
    tokens: N of the dummy input the shapes are traced with (changes no parameter shape).

  Returns:
    The ``params`` pytree: normal(0, 0.02) weights, zero biases, unit LayerNorm scales.
  """
  x = jnp.zeros((1, tokens, cfg.anchors), F32)
  return model_for(cfg).init(rng, x, align=True)["params"]


@functools.partial(jax.jit, static_argnames="cfg")
def rerank_scores(params, aff_BxNxL: jax.Array, cfg: ModelConfig) -> jax.Array:
  """New scores of tokens 1..N-1 (docs/method.md section 3): ``s_j = z_0 . z_j``, a cosine.

  Args:
    params: the model's parameters.
    aff_BxNxL: affinity features, token 0 the query (``affinity.rerank_affinity``).
    cfg: the model (static).

  Returns:
    float32 scores_Bx(N-1).
  """

  def scores(aff):
    z = model_for(cfg).apply({"params": params}, aff, train=False)
    return jnp.einsum("bd,bnd->bn", z[:, 0], z[:, 1:], precision="highest")

  if jax.default_backend() == "cpu" and aff_BxNxL.shape[0] > 1:
    # One query at a time keeps its (H, N, N) attention (50 MB at K=1024) in cache; on CPU that
    # beats the batched matmuls (measured in docs/benchmarks.md, csa-jax bench).
    return jax.lax.map(lambda a: scores(a[None])[0], aff_BxNxL)
  return scores(aff_BxNxL)


@functools.partial(jax.jit, static_argnames="cfg")
def training_outputs(params, aff_BxNxL: jax.Array, cfg: ModelConfig, rng=None):
  """What the training objective needs (docs/method.md sections 3-4).

  Args:
    params: the model's parameters.
    aff_BxNxL: affinity features, token 0 the query (``affinity.training_affinity``).
    cfg: the model (static).
    rng: a PRNG key turns on training mode (dropout, attention dropout, drop-path); None is eval.

  Returns:
    ``(logits_BxN, mse)``: logits_BxN = z_0 . z_j / t for j = 0..N-1 (token 0 included), so
    exp(logits) is the original model's ``exp_sim``; mse the scalar feature-alignment distance
    (mean over B and N).
  """
  train = rng is not None
  rngs = {"dropout": rng} if train else {}
  z, a = model_for(cfg).apply({"params": params}, aff_BxNxL, train=train, align=True, rngs=rngs)
  logits_BxN = jnp.einsum("bd,bnd->bn", z[:, 0], z, precision="highest") / cfg.temperature
  # The MSE term compares with the affinity *before* dropout (docs/method.md section 3).
  diff = l2_normalize(aff_BxNxL) - l2_normalize(a)
  r_BxN = jnp.sqrt(jnp.clip(jnp.sum(diff * diff, axis=-1), 1e-4, 1e4))
  return logits_BxN, jnp.mean(r_BxN)
