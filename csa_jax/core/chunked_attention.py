"""Flash-style attention in plain JAX: blocks of queries against blocks of keys, online softmax.

Per head and per block of queries the keys are visited a block at a time, keeping the running row
max m, the running sum l of exp(s - m) and the running output; no N x N tensor is materialised.
The VJP (``jax.custom_vjp``) saves only q, k, v, the output and the row log-sum-exp, and
recomputes each block's probabilities on the way back (the flash-attention-2 backward):

  p = exp(q_i k_j^T - lse_i),  dv_j += p^T do_i,  ds = p * (do_i v_j^T - D_i),
  dq_i += ds k_j,  dk_j += ds^T q_i,  with D_i = rowsum(do_i * o_i).

Heads and query blocks are loop iterations and the batch is a dimension of every block, so a
batch sharded over devices stays sharded (no loop runs over the sharded axis). Attention dropout
draws each block's keep-mask from ``fold_in(rng, block index)``: the same mask forward and
backward, drawn with the partitionable threefry like every other mask of the model, but a
different draw than ``xla_attention``'s (the same distribution).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

F32 = jnp.float32
# Chosen on a 2-core AMD EPYC for one K=1024 layer (tools/README.md): a few hundred queries
# against all keys at once was fastest forward and backward (1.6-1.9x XLA's); keys are only
# split past 2048, where one block's logits would no longer fit in cache.
MAX_BLOCK_Q = 256
MAX_BLOCK_K = 2048


def block_layout(n: int, max_block: int) -> tuple[int, int]:
  """How ``n`` rows split into equal blocks of at most ``max_block`` (a multiple of 8) rows.

  Args:
    n: rows (tokens).
    max_block: the largest block allowed.

  Returns:
    ``(blocks, rows_per_block)``; the last block is padded, by fewer than ``blocks * 8`` rows.
  """
  if max_block < 8 or max_block % 8:
    raise ValueError(f"chunked_attention: block size must be a multiple of 8, got {max_block}")
  blocks = -(-n // max_block)
  size = -(-n // blocks)
  return blocks, -(-size // 8) * 8


def _blocks(x_BxHxNxd, nb: int, b: int):
  """(B, H, N, ...) -> (H, nb, B, b, ...), N zero-padded to nb * b."""
  bsz, h, n = x_BxHxNxd.shape[:3]
  rest = x_BxHxNxd.shape[3:]
  pad = [(0, 0), (0, 0), (0, nb * b - n)] + [(0, 0)] * len(rest)
  x = jnp.pad(x_BxHxNxd, pad).reshape(bsz, h, nb, b, *rest)
  return jnp.moveaxis(x, (0, 1), (2, 0))


def _unblocks(x_HxnbxBxb, n: int):
  """The inverse of ``_blocks``: (H, nb, B, b, ...) -> (B, H, N, ...)."""
  h, nb, bsz, b = x_HxnbxBxb.shape[:4]
  x = jnp.moveaxis(x_HxnbxBxb, (2, 0), (0, 1))
  return x.reshape(bsz, h, nb * b, *x.shape[4:])[:, :, :n]


def _keep(rng, index, rate: float, shape):
  return jax.random.bernoulli(jax.random.fold_in(rng, index), 1.0 - rate, shape)


def _setup(q, k, v, max_q, max_k):
  bsz, h, n, d = q.shape
  nq, bq = block_layout(n, max_q)
  nk, bk = block_layout(n, max_k)
  valid_nkxbk = (jnp.arange(nk * bk) < n).reshape(nk, bk)
  qb = _blocks(q, nq, bq).reshape(h * nq, bsz, bq, d)
  return (nq, nk), qb, _blocks(k, nk, bk), _blocks(v, nk, bk), valid_nkxbk, nk * bk != n


def _logits(q_i, k_j, valid_j, masked: bool):
  s = jnp.einsum("bqd,bkd->bqk", q_i, k_j, preferred_element_type=F32)
  return jnp.where(valid_j, s, -jnp.inf) if masked else s


def _scan(step, init, xs, length: int):
  if length == 1:  # one key block: no loop
    carry, out = step(init, jax.tree.map(lambda a: a[0], xs))
    return carry, jax.tree.map(lambda a: a[None], out)
  return jax.lax.scan(step, init, xs)


def _forward(rate, max_q, max_k, q, k, v, rng):
  """Output (B, H, N, d) and the blocked row log-sum-exp (H * nq, B, bq)."""
  n = q.shape[2]
  (nq, nk), qb, kb, vb, valid, masked = _setup(q, k, v, max_q, max_k)

  def one(xs):
    t, q_i = xs
    k_h, v_h = kb[t // nq], vb[t // nq]

    def step(carry, xs):
      m, l, acc = carry
      j, k_j, v_j, valid_j = xs
      s = _logits(q_i, k_j, valid_j, masked)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      alpha = jnp.exp(m - m_new)
      p = jnp.exp(s - m_new[..., None])
      l = l * alpha + jnp.sum(p, axis=-1)
      if rate:  # the normaliser counts every key; only the output sees the dropout
        p = jnp.where(_keep(rng, t * nk + j, rate, p.shape), p / (1.0 - rate), 0.0)
      pv = jnp.einsum("bqk,bkd->bqd", p.astype(v_j.dtype), v_j, preferred_element_type=F32)
      return (m_new, l, acc * alpha[..., None] + pv), None

    shape = q_i.shape[:2]
    init = (jnp.full(shape, -jnp.inf, F32), jnp.zeros(shape, F32),
            jnp.zeros(q_i.shape, F32))
    (m, l, acc), _ = _scan(step, init, (jnp.arange(nk), k_h, v_h, valid), nk)
    return (acc / l[..., None]).astype(v.dtype), m + jnp.log(l)

  out, lse = jax.lax.map(one, (jnp.arange(qb.shape[0]), qb))
  h, bsz, bq = q.shape[1], q.shape[0], qb.shape[2]
  return _unblocks(out.reshape(h, nq, bsz, bq, -1), n), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _chunked(rate, max_q, max_k, q, k, v, rng):
  return _forward(rate, max_q, max_k, q, k, v, rng)[0]


def _chunked_fwd(rate, max_q, max_k, q, k, v, rng):
  out, lse = _forward(rate, max_q, max_k, q, k, v, rng)
  return out, (q, k, v, rng, out, lse)


def _chunked_bwd(rate, max_q, max_k, res, do_BxHxNxd):
  q, k, v, rng, out, lse = res
  bsz, h, n, d = q.shape
  (nq, nk), qb, kb, vb, valid, masked = _setup(q, k, v, max_q, max_k)
  bq = qb.shape[2]
  dob = _blocks(do_BxHxNxd.astype(v.dtype), nq, bq).reshape(h * nq, bsz, bq, d)
  d_BxHxN = jnp.sum(do_BxHxNxd.astype(F32) * out.astype(F32), axis=-1)
  db = _blocks(d_BxHxN, nq, bq).reshape(h * nq, bsz, bq)

  def one(carry, xs):
    dk_acc, dv_acc = carry
    t, q_i, do_i, lse_i, d_i = xs
    k_h, v_h = kb[t // nq], vb[t // nq]

    def step(dq_i, xs):
      j, k_j, v_j, valid_j = xs
      p = jnp.exp(_logits(q_i, k_j, valid_j, masked) - lse_i[..., None])
      dp = jnp.einsum("bqd,bkd->bqk", do_i, v_j, preferred_element_type=F32)
      pd = p
      if rate:
        keep = _keep(rng, t * nk + j, rate, p.shape)
        pd = jnp.where(keep, p / (1.0 - rate), 0.0)
        dp = jnp.where(keep, dp / (1.0 - rate), 0.0)
      dv_j = jnp.einsum("bqk,bqd->bkd", pd.astype(do_i.dtype), do_i, preferred_element_type=F32)
      ds = (p * (dp - d_i[..., None])).astype(q_i.dtype)
      dq_i = dq_i + jnp.einsum("bqk,bkd->bqd", ds, k_j, preferred_element_type=F32)
      dk_j = jnp.einsum("bqk,bqd->bkd", ds, q_i, preferred_element_type=F32)
      return dq_i, (dk_j, dv_j)

    dq_i, (dk_h, dv_h) = _scan(step, jnp.zeros(q_i.shape, F32),
                               (jnp.arange(nk), k_h, v_h, valid), nk)
    return (dk_acc.at[t // nq].add(dk_h), dv_acc.at[t // nq].add(dv_h)), dq_i

  zeros = jnp.zeros(kb.shape, F32)
  (dk, dv), dq = jax.lax.scan(one, (zeros, zeros), (jnp.arange(h * nq), qb, dob, lse, db))
  dq = _unblocks(dq.reshape(h, nq, bsz, bq, d), n)
  return dq.astype(q.dtype), _unblocks(dk, n).astype(k.dtype), _unblocks(dv, n).astype(v.dtype), None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_attention(q_BxHxNxd, k_BxHxNxd, v_BxHxNxd, rng=None, rate: float = 0.0,
                      max_block_q: int = MAX_BLOCK_Q, max_block_k: int = MAX_BLOCK_K):
  """softmax(q k^T) v without an N x N tensor, differentiable (flash-attention-2 VJP).

  Args:
    q_BxHxNxd: queries, already scaled by d**-0.5 (matmuls run in their dtype, float32
      accumulation; softmax statistics in float32).
    k_BxHxNxd: keys.
    v_BxHxNxd: values.
    rng: PRNG key for attention dropout; needed iff ``rate > 0``.
    rate: attention-dropout rate in [0, 1).
    max_block_q: the largest block of queries (a multiple of 8).
    max_block_k: the largest block of keys (a multiple of 8).

  Returns:
    out_BxHxNxd in v's dtype.
  """
  if rate and rng is None:
    raise ValueError("chunked_attention: attention dropout needs an rng")
  return _chunked(float(rate), int(max_block_q), int(max_block_k), q_BxHxNxd, k_BxHxNxd,
                  v_BxHxNxd, rng if rate else None)
