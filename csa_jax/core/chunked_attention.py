"""Flash-style attention in plain JAX: blocks of queries against blocks of keys, online softmax.

Per head and per block of queries the keys are visited a block at a time, keeping the running row
max m, the running sum l of exp(s - m) and the running output; only one head's (query block x key
block) logits exist at a time, never the (B, H, N, N) tensor. Inputs are (B, N, H, d), the layout
of ``jax.nn.dot_product_attention`` and of the qkv projection's output.

The logits are scale * q k^T, scale = d**-0.5 by default as in ``jax.nn.dot_product_attention``,
so the two are drop-in replacements for each other. The scale is applied to each block of queries
inside the kernel (bq x d products, not bq x bk, and no separate pass over q in memory).

The VJP (``jax.custom_vjp``) saves only q, k, v, the output and the row log-sum-exp, and
recomputes each block's probabilities on the way back (the flash-attention-2 backward), with
q'_i = scale * q_i:

  p = exp(q'_i k_j^T - lse_i),  dv_j += p^T do_i,  ds = p * (do_i v_j^T - D_i),
  dq_i += scale * ds k_j,  dk_j += ds^T q'_i,  with D_i = rowsum(do_i * o_i).

Heads (outer) and query blocks (inner) are loop iterations and the batch is a dimension of every
block, so a batch sharded over devices stays sharded (no loop runs over the sharded axis).
Attention dropout draws each block's keep-mask from ``fold_in(rng, block index)``: the same mask
forward and backward, drawn with the partitionable threefry like every other mask of the model,
but a different draw than ``xla_attention``'s (the same distribution).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from csa_jax.core.dropout import keep_mask

F32 = jnp.float32
# Chosen on a 2-core AMD EPYC (docs/benchmarks.md): one block of queries against all keys was the
# fastest re-ranking at K=1024 (N = 1025 tokens: 1032 rows, 5% faster than blocks of 256) and as
# fast as blocks of 256 for training at K=512; keys are only split past 2048, where a block's
# logits would no longer fit in cache.
MAX_BLOCK_Q = 1032
MAX_BLOCK_K = 2048


def block_layout(n: int, max_block: int, exact: bool = False) -> tuple[int, int]:
  """How ``n`` rows split into equal blocks of at most ``max_block`` (a multiple of 8) rows.

  Args:
    n: rows (tokens).
    max_block: the largest block allowed.
    exact: one block of exactly ``n`` rows when ``n <= max_block`` (keys: no padding to mask).

  Returns:
    ``(blocks, rows_per_block)``; the last block is padded, by fewer than ``blocks * 8`` rows.
  """
  if max_block < 8 or max_block % 8:
    raise ValueError(f"chunked_attention: block size must be a multiple of 8, got {max_block}")
  if exact and n <= max_block:
    return 1, n
  blocks = -(-n // max_block)
  size = -(-n // blocks)
  return blocks, -(-size // 8) * 8


def _blocks(x_BxNxH, nb: int, b: int):
  """(B, N, H, ...) -> (H, nb, B, b, ...), N zero-padded to nb * b."""
  bsz, n, h = x_BxNxH.shape[:3]
  rest = x_BxNxH.shape[3:]
  pad = [(0, 0), (0, nb * b - n)] + [(0, 0)] * (1 + len(rest))
  x = jnp.pad(x_BxNxH, pad).reshape(bsz, nb, b, h, *rest)
  return jnp.moveaxis(x, (0, 1, 3), (2, 1, 0))


def _unblocks(x_HxnbxBxb, n: int):
  """The inverse of ``_blocks``: (H, nb, B, b, ...) -> (B, N, H, ...)."""
  h, nb, bsz, b = x_HxnbxBxb.shape[:4]
  x = jnp.moveaxis(x_HxnbxBxb, (2, 1, 0), (0, 1, 3))
  return x.reshape(bsz, nb * b, h, *x.shape[4:])[:, :n]


def _keep(rng, index, rate: float, shape):
  return keep_mask(jax.random.fold_in(rng, index), rate, shape)


def _setup(q, k, v, max_q, max_k):
  n = q.shape[1]
  nq, bq = block_layout(n, max_q)
  nk, bk = block_layout(n, max_k, exact=True)
  valid_nkxbk = (jnp.arange(nk * bk) < n).reshape(nk, bk)
  return ((nq, bq), (nk, bk), _blocks(q, nq, bq), _blocks(k, nk, bk), _blocks(v, nk, bk),
          valid_nkxbk, nk * bk != n)


def _logits(q_i, k_j, valid_j, masked: bool):
  s = jnp.einsum("bqd,bkd->bqk", q_i, k_j, preferred_element_type=F32)
  return jnp.where(valid_j, s, -jnp.inf) if masked else s


def _scan(step, init, xs, length: int):
  if length == 1:  # one key block: no loop
    carry, out = step(init, jax.tree.map(lambda a: a[0], xs))
    return carry, jax.tree.map(lambda a: a[None], out)
  return jax.lax.scan(step, init, xs)


def _scaled(x, scale: float):
  # 1.0 skips the multiply: a caller passing pre-scaled queries gets exactly the old kernel.
  return x if scale == 1.0 else x * jnp.asarray(scale, x.dtype)


def _forward(rate, scale, max_q, max_k, q, k, v, rng):
  """Output (B, N, H, d) and the blocked row log-sum-exp (H, nq, B, bq)."""
  (nq, _), (nk, _), qb, kb, vb, valid, masked = _setup(q, k, v, max_q, max_k)

  def head(xs):  # one head: its keys and values are sliced once, not once per query block
    h, q_h, k_h, v_h = xs

    def one(xs):
      i, q_i = xs
      q_i = _scaled(q_i, scale)

      def step(carry, xs):
        m, l, acc = carry
        j, k_j, v_j, valid_j = xs
        s = _logits(q_i, k_j, valid_j, masked)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[..., None])
        l = l * alpha + jnp.sum(p, axis=-1)
        if rate:  # the normaliser counts every key; only the output sees the dropout
          keep, inv_keep = _keep(rng, (h * nq + i) * nk + j, rate, p.shape)
          p = jnp.where(keep, p * inv_keep, 0.0)
        pv = jnp.einsum("bqk,bkd->bqd", p.astype(v_j.dtype), v_j, preferred_element_type=F32)
        return (m_new, l, acc * alpha[..., None] + pv), None

      shape = q_i.shape[:2]
      init = (jnp.full(shape, -jnp.inf, F32), jnp.zeros(shape, F32), jnp.zeros(q_i.shape, F32))
      (m, l, acc), _ = _scan(step, init, (jnp.arange(nk), k_h, v_h, valid), nk)
      return (acc / l[..., None]).astype(v.dtype), m + jnp.log(l)

    return jax.lax.map(one, (jnp.arange(nq), q_h))

  out, lse = jax.lax.map(head, (jnp.arange(qb.shape[0]), qb, kb, vb))
  return _unblocks(out, q.shape[1]), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _chunked(rate, scale, max_q, max_k, q, k, v, rng):
  return _forward(rate, scale, max_q, max_k, q, k, v, rng)[0]


def _chunked_fwd(rate, scale, max_q, max_k, q, k, v, rng):
  out, lse = _forward(rate, scale, max_q, max_k, q, k, v, rng)
  return out, (q, k, v, rng, out, lse)


def _chunked_bwd(rate, scale, max_q, max_k, res, do_BxNxHxd):
  q, k, v, rng, out, lse = res
  n = q.shape[1]
  (nq, bq), (nk, _), qb, kb, vb, valid, masked = _setup(q, k, v, max_q, max_k)
  dob = _blocks(do_BxNxHxd.astype(v.dtype), nq, bq)
  db = _blocks(jnp.sum(do_BxNxHxd.astype(F32) * out.astype(F32), axis=-1), nq, bq)

  def head(xs):
    h, q_h, do_h, lse_h, d_h, k_h, v_h = xs

    def one(carry, xs):
      dk_h, dv_h = carry
      i, q_i, do_i, lse_i, d_i = xs
      q_i = _scaled(q_i, scale)  # the logits' queries; dq of the unscaled ones is scaled below

      def step(dq_i, xs):
        j, k_j, v_j, valid_j = xs
        p = jnp.exp(_logits(q_i, k_j, valid_j, masked) - lse_i[..., None])
        dp = jnp.einsum("bqd,bkd->bqk", do_i, v_j, preferred_element_type=F32)
        pd = p
        if rate:
          keep, inv_keep = _keep(rng, (h * nq + i) * nk + j, rate, p.shape)
          pd = jnp.where(keep, p * inv_keep, 0.0)
          dp = jnp.where(keep, dp * inv_keep, 0.0)
        dv_j = jnp.einsum("bqk,bqd->bkd", pd.astype(do_i.dtype), do_i,
                          preferred_element_type=F32)
        ds = (p * (dp - d_i[..., None])).astype(q_i.dtype)
        dq_i = dq_i + jnp.einsum("bqk,bkd->bqd", ds, k_j, preferred_element_type=F32)
        dk_j = jnp.einsum("bqk,bqd->bkd", ds, q_i, preferred_element_type=F32)
        return dq_i, (dk_j, dv_j)

      dq_i, (dk_i, dv_i) = _scan(step, jnp.zeros(q_i.shape, F32),
                                 (jnp.arange(nk), k_h, v_h, valid), nk)
      return (dk_h + dk_i, dv_h + dv_i), _scaled(dq_i, scale)

    zeros = jnp.zeros(k_h.shape, F32)
    (dk_h, dv_h), dq_h = jax.lax.scan(one, (zeros, zeros),
                                      (jnp.arange(nq), q_h, do_h, lse_h, d_h))
    return dq_h, dk_h, dv_h

  dq, dk, dv = jax.lax.map(head, (jnp.arange(qb.shape[0]), qb, dob, lse, db, kb, vb))
  return (_unblocks(dq, n).astype(q.dtype), _unblocks(dk, n).astype(k.dtype),
          _unblocks(dv, n).astype(v.dtype), None)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_attention(q_BxNxHxd, k_BxNxHxd, v_BxNxHxd, rng=None, rate: float = 0.0,
                      max_block_q: int = MAX_BLOCK_Q, max_block_k: int = MAX_BLOCK_K, *,
                      scale: float | None = None):
  """softmax(scale * q k^T) v without an N x N tensor, differentiable (flash-attention-2 VJP).

  The same maths and layout as ``jax.nn.dot_product_attention(q, k, v, scale=scale)`` (no bias,
  no mask). Matmuls run in the inputs' dtype with float32 accumulation; softmax statistics are
  float32.

  Args:
    q_BxNxHxd: queries, unscaled (``jax.nn.dot_product_attention``'s layout).
    k_BxNxHxd: keys.
    v_BxNxHxd: values.
    rng: PRNG key for attention dropout; needed iff ``rate > 0``.
    rate: attention-dropout rate in [0, 1).
    max_block_q: the largest block of queries (a multiple of 8).
    max_block_k: the largest block of keys (a multiple of 8).
    scale: the logits' factor; None means d**-0.5 (as ``jax.nn.dot_product_attention``), 1.0
      suits queries the caller has already scaled.

  Returns:
    out_BxNxHxd in v's dtype.
  """
  if rate and rng is None:
    raise ValueError("chunked_attention: attention dropout needs an rng")
  scale = q_BxNxHxd.shape[-1] ** -0.5 if scale is None else float(scale)
  return _chunked(float(rate), scale, int(max_block_q), int(max_block_k), q_BxNxHxd, k_BxNxHxd,
                  v_BxNxHxd, rng if rate else None)
