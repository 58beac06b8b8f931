"""The attention implementations agree with each other and with a direct softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csa_jax import ModelConfig, init_params, parallel, rerank_scores, training_outputs
from csa_jax.core import attention
from csa_jax.core import chunked_attention as ca


def _qkvw(b=2, h=3, n=37, d=8, seed=1):
  ks = jax.random.split(jax.random.key(seed), 4)
  return [jax.random.normal(k, (b, h, n, d)) for k in ks]


def _t(a):
  """(B, H, N, d) <-> (B, N, H, d): chunked_attention takes the latter."""
  return a.transpose(0, 2, 1, 3)


def _numpy_attention(q, k, v):
  s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k.astype(np.float64))
  p = np.exp(s - s.max(-1, keepdims=True))
  return np.einsum("bhqk,bhkd->bhqd", p / p.sum(-1, keepdims=True), v.astype(np.float64))


# The gradient cases on one block (1024 >= N) are in the slow tier; the blocked path (16, 8)
# covers the same code with several blocks in the fast tier.
BLOCKS = [pytest.param(1024, 1024, marks=pytest.mark.slow), (16, 8)]


@pytest.mark.parametrize("n,max_q,max_k", [(37, 1024, 1024), (37, 16, 8), (37, 8, 24),
                                           (64, 32, 32), (5, 8, 8)])
def test_chunked_forward_matches_softmax(n, max_q, max_k):
  q, k, v, _ = _qkvw(n=n)
  want = _numpy_attention(*(np.asarray(a) for a in (q, k, v)))
  got = ca.chunked_attention(_t(q), _t(k), _t(v), max_block_q=max_q, max_block_k=max_k,
                            scale=1.0)
  np.testing.assert_allclose(np.asarray(_t(got)), want, atol=2e-6)
  np.testing.assert_allclose(np.asarray(attention.xla_attention(q, k, v, scale=1.0)), want,
                             atol=2e-6)


@pytest.mark.parametrize("max_q,max_k", BLOCKS)
def test_chunked_gradients_match_xla(max_q, max_k):
  q, k, v, w = _qkvw()

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

  chunked = lambda q, k, v: _t(ca.chunked_attention(_t(q), _t(k), _t(v), max_block_q=max_q,
                                                    max_block_k=max_k, scale=1.0))
  got = jax.grad(loss(chunked), (0, 1, 2))(q, k, v)
  xla = lambda q, k, v: attention.xla_attention(q, k, v, scale=1.0)
  want = jax.grad(loss(xla), (0, 1, 2))(q, k, v)
  for g, r in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5)


@pytest.mark.parametrize("max_q,max_k", BLOCKS)
def test_chunked_dropout_gradient_is_the_gradient_of_its_forward(max_q, max_k):
  # The hand-written VJP against autodiff of the same blocked forward (same keep-masks).
  q, k, v, w = (_t(a) for a in _qkvw())  # (B, N, H, d), N = 37
  rng = jax.random.key(5)
  hand = jax.grad(lambda q, k, v: jnp.sum(
      ca.chunked_attention(q, k, v, rng, 0.3, max_q, max_k, scale=1.0) * w), (0, 1, 2))(q, k, v)
  auto = jax.grad(lambda q, k, v: jnp.sum(
      ca._forward(0.3, 1.0, max_q, max_k, q, k, v, rng)[0] * w), (0, 1, 2))(q, k, v)
  for g, r in zip(hand, auto):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5)


def test_chunked_dropout_zeroes_probabilities_and_rescales_the_rest():
  # With v = identity, out[q, j] = p_qj * keep_qj / (1 - rate): each entry is 0 or p / (1 - rate).
  n, rate = 40, 0.25
  q, k, _, _ = _qkvw(b=2, h=2, n=n, d=n)
  v = jnp.broadcast_to(jnp.eye(n), q.shape)
  p = np.asarray(attention.xla_attention(q, k, v, scale=1.0))
  out = np.asarray(_t(ca.chunked_attention(_t(q), _t(k), _t(v), jax.random.key(0), rate, 16,
                                           16, scale=1.0)))
  kept = out != 0
  np.testing.assert_allclose(out[kept], p[kept] / (1 - rate), rtol=1e-5)
  assert abs(1 - kept.mean() - rate) < 0.03  # 6400 draws: 5 standard deviations
  with pytest.raises(ValueError, match="needs an rng"):
    ca.chunked_attention(q, k, v, None, rate)


@pytest.mark.parametrize("max_q,max_k", BLOCKS)
def test_default_scale_is_a_drop_in_for_jax_dot_product_attention(max_q, max_k):
  # scale=None means d**-0.5 in every implementation, as in jax.nn.dot_product_attention; the
  # unscaled call differs from it by far more than the tolerance (a drop-in use of the old
  # pre-scaled convention was seen to differ by up to 2.27).
  q, k, v, w = (_t(a) for a in _qkvw(d=16))  # (B, N, H, d)
  q, k = q * 2, k * 2  # peaked logits, where a wrong scale shows
  want = jax.nn.dot_product_attention(q, k, v)
  got = ca.chunked_attention(q, k, v, max_block_q=max_q, max_block_k=max_k)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  unscaled = ca.chunked_attention(q, k, v, max_block_q=max_q, max_block_k=max_k, scale=1.0)
  assert np.abs(np.asarray(unscaled) - np.asarray(want)).max() > 1e-2
  np.testing.assert_allclose(np.asarray(_t(attention.xla_attention(_t(q), _t(k), _t(v)))),
                             np.asarray(want), atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(attention.dot_product_attention(q, k, v, implementation="xla")),
      np.asarray(want), atol=1e-5)
  # The scale is inside the custom VJP: gradients of q, k and v against JAX's autodiff.
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) * w)
  chunked = lambda q, k, v: ca.chunked_attention(q, k, v, max_block_q=max_q, max_block_k=max_k)
  got_g = jax.grad(loss(chunked), (0, 1, 2))(q, k, v)
  want_g = jax.grad(loss(jax.nn.dot_product_attention), (0, 1, 2))(q, k, v)
  for g, r in zip(got_g, want_g):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n,max_block", [(1025, 1024), (1025, 512), (5, 8), (64, 64), (9, 8)])
def test_block_layout_covers_rows_with_little_padding(n, max_block):
  blocks, size = ca.block_layout(n, max_block)
  assert size % 8 == 0 and size <= max_block
  assert (blocks - 1) * size < n <= blocks * size  # every block holds a real row
  assert blocks * size - n < 8 * blocks
  exact = ca.block_layout(n, max_block, exact=True)
  assert exact == ((1, n) if n <= max_block else (blocks, size))
  with pytest.raises(ValueError, match="multiple of 8"):
    ca.block_layout(n, 12)


def test_resolve_per_backend():
  cfg = ModelConfig()
  assert attention.resolve(cfg, "cpu", dropout=True) == "chunked"
  assert attention.resolve(cfg, "gpu", dropout=False) == "xla"
  bf16 = cfg.replace(attention="cudnn", dtype="bfloat16")
  assert attention.resolve(bf16, "gpu", dropout=False) == "cudnn"
  assert attention.resolve(bf16, "gpu", dropout=True) == "xla"
  assert attention.resolve(bf16, "cpu", dropout=False) == "xla"
  assert attention.resolve(bf16.replace(dtype="float32"), "gpu", dropout=False) == "xla"
  assert attention.resolve(cfg.replace(attention="xla"), "cpu", dropout=False) == "xla"
  with pytest.raises(ValueError, match="attention must be one of"):
    ModelConfig(attention="flash")


def test_dot_product_attention_layout_matches():
  # The (B, N, H, d) branch the cudnn choice runs, with XLA's kernel so it runs on CPU too.
  q, k, v, _ = _qkvw()
  got = attention.dot_product_attention(_t(q), _t(k), _t(v), implementation="xla", scale=1.0)
  np.testing.assert_allclose(np.asarray(_t(got)),
                             np.asarray(attention.xla_attention(q, k, v, scale=1.0)), atol=2e-6)


def test_unavailable_implementation_falls_back_to_xla(caplog):
  q, k, v, _ = _qkvw(b=1, h=2, n=9, d=8)
  # float32 on CPU: cuDNN's kernel refuses it.
  got = attention.dot_product_attention(_t(q), _t(k), _t(v), implementation="cudnn", scale=1.0)
  np.testing.assert_allclose(np.asarray(_t(got)),
                             np.asarray(attention.xla_attention(q, k, v, scale=1.0)), atol=2e-6)
  assert "unavailable" in caplog.text


@pytest.mark.slow
def test_model_outputs_agree_across_implementations_with_a_sharded_batch():
  cfg = ModelConfig(anchors=16, dim=32, depth=2, heads=4, mlp_ratio=2, drop=0.0, attn_drop=0.0,
                    drop_path=0.0)
  params = init_params(cfg, jax.random.key(0))
  params = jax.tree.map(lambda p: p * 5.0 if p.ndim == 2 else p, params)  # peaked attention
  x = jax.random.uniform(jax.random.key(1), (8, 21, 16))
  xs = jax.device_put(x, parallel.batch_sharding(parallel.make_mesh()))
  want = rerank_scores(params, x, cfg.replace(attention="xla"))
  got = rerank_scores(params, xs, cfg.replace(attention="chunked"))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  logits_x, mse_x = training_outputs(params, x, cfg.replace(attention="xla"))
  logits_c, mse_c = training_outputs(params, xs, cfg.replace(attention="chunked"))
  np.testing.assert_allclose(np.asarray(logits_c), np.asarray(logits_x), atol=1e-5)
  np.testing.assert_allclose(float(mse_c), float(mse_x), atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_agrees_with_xla_in_bfloat16():
  cfg = ModelConfig(anchors=64, dim=128, depth=2, heads=2, dtype="bfloat16")
  params = init_params(cfg, jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (4, 129, 64))
  want = rerank_scores(params, x, cfg.replace(attention="xla"))
  got = rerank_scores(params, x, cfg.replace(attention="cudnn"))
  assert np.abs(np.asarray(got) - np.asarray(want)).max() <= 2e-2
