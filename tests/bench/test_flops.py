"""csa_jax.bench.flops: the cost model of docs/method.md section 9, matmul by matmul."""

from csa_jax.bench import flops
from csa_jax.core.config import ModelConfig


def test_flops_match_a_layer_by_layer_count():
  cfg = ModelConfig()
  n, l, d = 1025, 512, 768
  # Every matmul of the model, as (rows, contraction, cols) of one sample.
  mats = [(n, l, d)] + cfg.depth * [(n, d, 3 * d), (n, d, n), (n, n, d), (n, d, d),
                                    (n, d, 4 * d), (n, 4 * d, d)]
  expected = sum(2 * a * b * c for a, b, c in mats)
  assert flops.forward_flops(cfg, n) == expected
  assert flops.forward_flops(cfg, n, align=True) == expected + 2 * n * d * l
  assert 35e9 < flops.forward_flops(cfg, n) < 37e9  # docs/method.md section 9: "about 36 GFLOP"
  assert flops.rerank_flops(cfg, 1024, 2048) == expected + 2 * n * l * 2048
  assert flops.train_flops(cfg, 512) == 3 * flops.forward_flops(cfg, 512, align=True)


def test_the_mlp_ratio_enters():
  cfg = ModelConfig(anchors=8, dim=16, depth=3, heads=2, mlp_ratio=2)
  n = 5
  wide = cfg.replace(mlp_ratio=4)
  # Two MLP matmuls per block, each 2 N D (r D).
  assert flops.forward_flops(wide, n) - flops.forward_flops(cfg, n) == 3 * 2 * (2 * n * 16 * 32)
