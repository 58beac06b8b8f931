"""``compiled_attention``: the attention a compiled program runs, read from its HLO."""

import numpy as np
import pytest

from csa_jax import params_from_torch_state_dict, rerank_scores
from csa_jax.bench.compiled_attention import attention_ran


@pytest.fixture(scope="module")
def tiny(data_dir):
  z = np.load(data_dir / "csa_tiny_reference.npz")
  sd = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
  return params_from_torch_state_dict(sd, heads=int(z["config"][2])), z["x"]


@pytest.mark.parametrize("impl, ran", [("xla", "xla-materialised"), ("chunked", "blocked")])
def test_what_the_cpu_compiler_made_of_each_attention(tiny, impl, ran):
  (params, cfg), x = tiny
  text = rerank_scores.lower(params, x, cfg.replace(attention=impl)).compile().as_text()
  assert attention_ran(text, x.shape[0], cfg.heads, x.shape[1]) == ran


def test_shapes_that_are_not_attention_are_not_taken_for_it():
  # A cuDNN fused-attention call wins over anything else in the program.
  assert attention_ran('custom_call_target="__cudnn$fmhaSoftmax"', 8, 12, 1025) == "cudnn-fused"
  assert attention_ran("f32[8,12,1025,1025]{3,2,1,0}", 8, 12, 1025) == "xla-materialised"
  assert attention_ran("bf16[96,1025,1025]", 8, 12, 1025) == "xla-materialised"
  # A training batch's (B, K, L) affinities with K = L, and blocks of keys, are not N x N per head.
  assert attention_ran("f32[8,512,512] f32[8,12,512,128]", 8, 12, 512) == "blocked"
  assert attention_ran("f32[12,512,512]", 12, 12, 512) == "blocked"
  assert attention_ran("f32[8,12,1024,1024]", 8, 12, 1025) == "blocked"
