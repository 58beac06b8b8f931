"""The cost model of docs/method.md section 9: matmul FLOPs of the re-ranker per query or sample.

Only matmuls count (LayerNorm, softmax, GELU and dropout are a few percent at the paper's sizes).
Every benchmark that reports FLOP/s uses these functions, so their numbers compare.
"""

from __future__ import annotations

from csa_jax.core.config import ModelConfig


def forward_flops(cfg: ModelConfig, n: int, align: bool = False) -> float:
  """Forward FLOPs of one sample of ``n`` tokens.

  Args:
    cfg: the model (L, D, depth and MLP ratio enter).
    n: tokens N.
    align: include the alignment head (training only).

  Returns:
    ``2NLD + depth (2N D 3D + 4N^2 D + 2N D^2 + 4 r N D^2) [+ 2NDL]``, r the MLP ratio (4 in the
    paper, giving the 16 N D^2 of docs/method.md section 9).
  """
  l, d, r = cfg.anchors, cfg.dim, cfg.mlp_ratio
  block = 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * r * n * d * d
  return 2 * n * l * d + cfg.depth * block + (2 * n * d * l if align else 0)


def rerank_flops(cfg: ModelConfig, k: int, c: int) -> float:
  """One re-ranked query: the (K+1, L) affinity from C-d descriptors, then the forward.

  Args:
    cfg: the model.
    k: candidates K (the forward sees K+1 tokens, the query first).
    c: descriptor size C.

  Returns:
    ``2 (K+1) L C + forward_flops(cfg, K+1)``.
  """
  return 2 * (k + 1) * cfg.anchors * c + forward_flops(cfg, k + 1)


def train_flops(cfg: ModelConfig, k: int) -> float:
  """One training sample of K tokens: forward with the alignment head, backward about 2x that.

  Args:
    cfg: the model.
    k: tokens per sample K.

  Returns:
    ``3 forward_flops(cfg, K, align=True)`` (the affinity gather-matmul is left out).
  """
  return 3 * forward_flops(cfg, k, align=True)
