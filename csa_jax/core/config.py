"""Model hyper-parameters (docs/method.md section 3)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTIONS = ("auto", "xla", "chunked", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The CSA re-ranker's shape; defaults are the paper model.

  Frozen and hashable so it can be a static argument of ``jax.jit``.

  Attributes:
    anchors: L, the number of anchor similarities per token (input width).
    dim: D, the hidden size.
    depth: number of pre-norm transformer blocks.
    heads: H, attention heads (D must be divisible by H).
    mlp_ratio: MLP hidden size is ``mlp_ratio * D``.
    qkv_bias: whether the fused qkv projection has a bias.
    drop: dropout on the input ("sim_drop"), after the projection ("pos_drop"), after attention
      and MLP projections.
    attn_drop: dropout on the attention probabilities.
    drop_path: the last block's stochastic-depth rate; block i uses
      linspace(0, drop_path, depth)[i].
    temperature: t in exp(z_0 . z_j / t).
    dtype: compute dtype of the matmuls, "float32" or "bfloat16"; parameters stay float32.
    attention: how softmax(q k^T) v is computed (``core.attention``); every choice has the same
      parameters and the same maths: "xla" (einsums + softmax, the (B, H, N, N) tensor in
      memory), "chunked" (blocks of queries and keys with a running max and sum, no N x N
      tensor), "cudnn" (``jax.nn.dot_product_attention`` with cuDNN's fused kernel, on NVIDIA
      GPUs in bfloat16, when no attention dropout is active; "xla" elsewhere), "auto" (chosen per
      backend and shape from measurements, see ``core.attention.resolve``).
  """

  anchors: int = 512
  dim: int = 768
  depth: int = 2
  heads: int = 12
  mlp_ratio: int = 4
  qkv_bias: bool = True
  drop: float = 0.1
  attn_drop: float = 0.1
  drop_path: float = 0.1
  temperature: float = 2.0
  dtype: str = "float32"
  attention: str = "auto"

  def __post_init__(self):
    if self.dtype not in _DTYPES:
      raise ValueError(f"ModelConfig: dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
    if self.attention not in ATTENTIONS:
      raise ValueError(f"ModelConfig: attention must be one of {list(ATTENTIONS)}, "
                       f"got {self.attention!r}")
    for name in ("anchors", "dim", "depth", "heads", "mlp_ratio"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"ModelConfig: {name} must be an integer >= 1, got {v!r}")
    if self.dim % self.heads:
      raise ValueError(f"ModelConfig: dim {self.dim} is not divisible by heads {self.heads}")
    for name in ("drop", "attn_drop", "drop_path"):
      v = getattr(self, name)
      if not (isinstance(v, (int, float)) and 0 <= v < 1):
        raise ValueError(f"ModelConfig: {name} must be a rate in [0, 1), got {v!r}")
    # t divides the logits: 0, negative or non-finite values make every loss NaN.
    t = self.temperature
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
      raise ValueError(f"ModelConfig: temperature must be a finite number > 0, got {t!r}")

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


class Model(NamedTuple):
  """A re-ranker as the host drivers take it: its parameters and its config.

  ``csa_jax.load_model`` returns one; a plain ``(params, cfg)`` tuple works wherever a ``Model``
  is taken, and a ``Model`` unpacks as one (``params, cfg = model``). The drivers read the
  anchors L from ``model.cfg.anchors``.

  Attributes:
    params: the parameter pytree (``init_params`` / ``load_model``).
    cfg: its ``ModelConfig``.
  """

  params: Any
  cfg: ModelConfig
