"""``csa-jax smoke``: the whole re-ranking path on a generated retrieval set, untrained.

Proves the install works end to end (first-round search, affinity, re-ranker, re-ordering) and
prints shapes and timings. The model is freshly initialised, so the new order means nothing.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from csa_jax.core.affinity import rerank_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import init_params, rerank_scores
from csa_jax.core.normalize import l2_normalize
from csa_jax.retrieval.reorder import reorder_top


def _timed(fn, *args):
  t = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - t


def run(queries=8, db=5000, dim=2048, k=1024, l=512, dtype="float32", seed=0) -> dict:
  """The re-ranking path on random unit descriptors with a fresh, untrained model.

  Args:
    queries: Q.
    db: database size N.
    dim: descriptor size C.
    k: candidates re-ranked per query.
    l: anchors.
    dtype: the model's compute dtype.
    seed: seeds the data and the parameters.

  Returns:
    A dict of the sizes, the shapes of each stage's output, and seconds per stage for the first
    call (with compilation) and the second (steady state).
  """
  rng = np.random.default_rng(seed)
  q = jnp.asarray(l2_normalize(rng.normal(size=(queries, dim)).astype(np.float32)))
  x = jnp.asarray(l2_normalize(rng.normal(size=(db, dim)).astype(np.float32)))
  cfg = ModelConfig(anchors=l, dtype=dtype)
  params = init_params(cfg, jax.random.key(seed))
  search = jax.jit(lambda q, x: jax.lax.top_k(q @ x.T, max(k, l - 1))[1])
  out = {"queries": queries, "db": db, "dim": dim, "K": k, "L": l, "dtype": dtype,
         "backend": jax.default_backend(), "devices": jax.device_count()}
  for stage in ("first_call_s", "steady_s"):
    t = {}
    top, t["search"] = _timed(search, q, x)
    aff, t["affinity"] = _timed(lambda: rerank_affinity(q, x, top, K=k, L=l))
    scores, t["rerank"] = _timed(lambda: rerank_scores(params, aff, cfg))
    out[stage] = t
  top, new_top = np.asarray(top), reorder_top(top, scores)
  out["shapes"] = {"top": list(top.shape), "affinity": list(aff.shape),
                   "scores": list(scores.shape), "new_top": list(new_top.shape)}
  moved = float(np.mean(new_top[:, :k] != top[:, :k]))
  out["fraction_of_top_k_moved"] = moved
  out["queries_per_s"] = queries / sum(out["steady_s"].values())
  return out


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="csa-jax smoke", description=__doc__)
  p.add_argument("--queries", type=int, default=8)
  p.add_argument("--db", type=int, default=5000)
  p.add_argument("--dim", type=int, default=2048)
  p.add_argument("--K", type=int, default=1024)
  p.add_argument("--L", type=int, default=512)
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  a = p.parse_args(argv)
  r = run(a.queries, a.db, a.dim, a.K, a.L, a.dtype)
  print(f"csa_jax smoke: {r['queries']} queries x {r['db']} db x {r['dim']}-d, paper-size model "
        f"(untrained), K={r['K']} L={r['L']} {r['dtype']} on {r['backend']} x{r['devices']}")
  for name, shape in r["shapes"].items():
    print(f"  {name:<9} {tuple(shape)}")
  print(f"  {'stage':<9} {'first call (s)':>15} {'steady (s)':>11}")
  for stage in r["steady_s"]:
    print(f"  {stage:<9} {r['first_call_s'][stage]:>15.3f} {r['steady_s'][stage]:>11.3f}")
  print(f"  steady-state throughput: {r['queries_per_s']:.1f} queries/s "
        f"(search + affinity + re-rank); untrained model, no quality claim")
  return 0
