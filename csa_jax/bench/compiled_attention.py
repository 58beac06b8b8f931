"""Which attention a compiled program really runs, read from its optimised HLO.

``jax.nn.dot_product_attention(implementation="cudnn")`` is rejected on some GPUs, cuDNN
versions and shapes, and ``core.attention.dot_product_attention`` then falls back to XLA's with
a warning; ``ModelConfig.attention`` says what was asked, not what ran. ``csa-jax bench`` reports
what the compiler produced instead:

- "cudnn-fused": a cuDNN fused-attention custom call (``__cudnn$fmha...``) is in the program;
- "xla-materialised": the logits or probabilities exist as N x N tensors (XLA's two einsums and
  softmax, ``xla_attention``);
- "blocked": neither: no N x N tensor anywhere (``chunked_attention``'s online softmax).
"""

from __future__ import annotations

import re

CUDNN_FMHA = "__cudnn$fmha"


def attention_ran(hlo_text: str, batch: int, heads: int, tokens: int) -> str:
  """The attention a compiled program runs.

  Args:
    hlo_text: ``jitted.lower(...).compile().as_text()``.
    batch: B, queries or samples in the call.
    heads: H.
    tokens: N, the sequence length of the attention (K+1 re-ranking, K training).

  Returns:
    "cudnn-fused", "xla-materialised" or "blocked" (module docstring).
  """
  if CUDNN_FMHA in hlo_text:
    return "cudnn-fused"
  # Per-head N x N tensors, as "f32[8,12,1025,1025]" or, heads folded into the batch for a
  # batched matmul, "f32[96,1025,1025]" (a training batch's (B, K, L) affinities with K = L are
  # 3-D with B first, so neither form takes them for attention).
  n = tokens
  if re.search(rf"\[\d+,{heads},{n},{n}\]|\[{batch * heads},{n},{n}\]", hlo_text):
    return "xla-materialised"
  return "blocked"
