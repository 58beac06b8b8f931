"""The CSA re-ranker as a Flax Linen module (docs/method.md section 3).

Parameter names mirror the original PyTorch module (``topk_proj``, ``blocks_{i}/attn/qkv``, ...)
so that checkpoint conversion is a rename plus a transpose. Matmuls run in ``cfg.dtype``;
LayerNorm, softmax and the final normalisation run in float32 whatever the compute dtype, because
bfloat16's 8-bit mantissa is too coarse for variance and exp.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from csa_jax.core import attention
from csa_jax.core.config import ModelConfig
from csa_jax.core.dropout import Dropout
from csa_jax.core.normalize import l2_normalize

F32 = jnp.float32
_INIT = nn.initializers.normal(stddev=0.02)


def _dense(cfg: ModelConfig, features: int, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=cfg.compute_dtype, param_dtype=F32,
                  kernel_init=_INIT, bias_init=nn.initializers.zeros, name=name)


def _layer_norm(name: str) -> nn.LayerNorm:
  # PyTorch's eps; Flax defaults to 1e-6.
  return nn.LayerNorm(epsilon=1e-5, dtype=F32, param_dtype=F32, name=name)


def drop_path_rates(cfg: ModelConfig) -> list[float]:
  """Stochastic-depth rate of each block (docs/method.md section 3), as timm's ViT.

  Args:
    cfg: the model; its ``drop_path`` is the last block's rate.

  Returns:
    ``linspace(0, cfg.drop_path, cfg.depth)`` as a list of floats, one per block.
  """
  return [float(r) for r in np.linspace(0.0, cfg.drop_path, cfg.depth)]


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample, rescales the kept ones."""

  rate: float

  @nn.compact
  def __call__(self, x_BxNxD, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x_BxNxD
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x_BxNxD.shape[0], 1, 1))
    return x_BxNxD * mask.astype(x_BxNxD.dtype) / keep


class Attention(nn.Module):
  """Multi-head self-attention; ``cfg.attention`` picks how softmax(q k^T) v is computed."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxNxD, deterministic: bool):
    cfg = self.cfg
    b, n, d_model = x_BxNxD.shape
    hd = d_model // cfg.heads
    rate = 0.0 if deterministic else cfg.attn_drop
    impl = attention.resolve(cfg, jax.default_backend(), dropout=rate > 0)
    qkv = _dense(cfg, 3 * d_model, "qkv", use_bias=cfg.qkv_bias)(x_BxNxD)
    # PyTorch order (B, N, 3, H, d). For XLA's and the chunked attention q is scaled here, by a
    # constant XLA folds into the qkv matmul (no pass over q, and the numbers every earlier
    # result was measured with); cuDNN's fused kernel takes the scale itself.
    qkv = qkv.reshape(b, n, 3, cfg.heads, hd)
    if impl == "xla":
      # (3, B, H, N, d): both attention matmuls read contiguous operands.
      qkv = qkv.transpose(2, 0, 3, 1, 4)
      out = attention.xla_attention(
          qkv[0] * (hd ** -0.5), qkv[1], qkv[2], scale=1.0,
          drop=lambda p: Dropout(cfg.attn_drop)(p, deterministic=deterministic))
      out = out.transpose(0, 2, 1, 3)
    else:  # both take (B, N, H, d) as it comes; their blocking does the one transpose
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
      if impl == "chunked":
        rng = self.make_rng("dropout") if rate else None
        out = attention.chunked_attention(q * (hd ** -0.5), k, v, rng, rate, scale=1.0)
      else:
        out = attention.dot_product_attention(q, k, v, implementation="cudnn")
    out = _dense(cfg, d_model, "proj")(out.reshape(b, n, d_model))
    return Dropout(cfg.drop)(out, deterministic=deterministic)


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxNxD, deterministic: bool):
    cfg = self.cfg
    h = _dense(cfg, cfg.mlp_ratio * cfg.dim, "fc1")(x_BxNxD)
    h = nn.gelu(h.astype(F32), approximate=False)  # exact erf GELU, as torch.nn.GELU()
    h = Dropout(cfg.drop)(h, deterministic=deterministic)
    h = _dense(cfg, cfg.dim, "fc2")(h)
    return Dropout(cfg.drop)(h, deterministic=deterministic)


class Block(nn.Module):
  """Pre-norm ViT block with stochastic depth."""

  cfg: ModelConfig
  drop_path: float

  @nn.compact
  def __call__(self, h_BxNxD, deterministic: bool):
    dp = DropPath(self.drop_path)
    a = Attention(self.cfg, name="attn")(_layer_norm("norm1")(h_BxNxD), deterministic)
    h_BxNxD = h_BxNxD + dp(a, deterministic).astype(F32)
    m = Mlp(self.cfg, name="mlp")(_layer_norm("norm2")(h_BxNxD), deterministic)
    return h_BxNxD + dp(m, deterministic).astype(F32)


class CSA(nn.Module):
  """Affinity features (B, N, L) -> normalised token features z (B, N, D).

  With ``align=True`` also returns the feature-alignment head's output a (B, N, L), used only by
  the training objective's MSE term. Dropouts are active iff ``train`` (needs a 'dropout' rng).
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxNxL, *, train: bool = False, align: bool = False):
    cfg = self.cfg
    if x_BxNxL.shape[-1] != cfg.anchors:
      raise ValueError(f"CSA: input has {x_BxNxL.shape[-1]} anchors, the model expects "
                       f"{cfg.anchors} (shape (B, N, L) with L = cfg.anchors)")
    det = not train
    x = Dropout(cfg.drop)(x_BxNxL.astype(F32), deterministic=det)  # sim_drop
    h = _dense(cfg, cfg.dim, "topk_proj")(x).astype(F32)
    h = Dropout(cfg.drop)(h, deterministic=det)  # pos_drop
    for i, rate in enumerate(drop_path_rates(cfg)):
      h = Block(cfg, rate, name=f"blocks_{i}")(h, det)
    z_BxNxD = l2_normalize(h)
    if not align:
      return z_BxNxD
    a_BxNxL = _dense(cfg, cfg.anchors, "feature_align")(h).astype(F32)
    return z_BxNxD, a_BxNxL


@functools.lru_cache(maxsize=None)
def model_for(cfg: ModelConfig) -> CSA:
  """The ``CSA`` module of ``cfg``, one instance per config (modules are stateless)."""
  return CSA(cfg)
