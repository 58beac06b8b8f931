"""Benchmark: revisited evaluation at R1M scale, the original's way against csa_jax's.

  python tools/bench_eval_r1m.py [--n 1001001] [--dim 2048] [--queries 70] [--T 100]
                                 [--ways original,csa_jax,csa_jax:1024] [--dir /tmp]
                                 [--out results.json] [--keep | --reuse DIR]

Generates ``--n`` random L2-normalised descriptors into a .npy in ``--dir`` (in chunks: 8 GB at
full size never sits in RAM), with planted positives / junk for ``--queries`` random queries
(ROxf-like list sizes, cosines spread so that some positives rank deep), then runs, each in its
own subprocess so that peak RSS is separate, end to end from descriptors to the E/M/H table:

  original: dense scores (numpy, db as a memmap), full argsort of every column, and the reference
            tools' per-query loop evaluator (compute_ap / compute_map, written here in their style);
  csa_jax:  blocked top-T search with every score as a by-product
            (``csa_jax.retrieval.search.top_k_search``: on CPU one BLAS sgemm per block straight
            into the scores and a numpy running top-T; on accelerators XLA) and the exact evaluator
            (``csa_jax.evaluation.revisited.revisited_map_from_scores``), as ``csa-jax eval``
            (``csa_jax:T`` keeps a top-T list of another length, e.g. 1024 for re-ranking;
            ``csa_jax:T:jax`` forces the search's jax implementation, the accelerators' one and
            the CPU default until the host one, which ``csa_jax:T:host`` forces).

Prints time and peak RSS of both and checks both print the same table. The .npy is deleted at the
end unless ``--keep``; ``--reuse DIR`` runs on the files a ``--keep`` run left in DIR (same
``--n``, ``--dim``, ``--queries``) without generating or deleting them (it reads the .npy once
first, so that it is in the page cache as after generating). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

KAPPAS = [1, 5, 10]


def log(msg):
  print(f"[bench_eval_r1m] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Data.


def unit_rows(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def generate(d: str, n: int, dim: int, nq: int, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  q = unit_rows(rng.standard_normal((nq, dim), dtype=np.float32))
  sizes = {"easy": (5, 80), "hard": (10, 120), "junk": (10, 150)}
  cos = {"easy": (0.15, 0.9), "hard": (0.01, 0.25), "junk": (0.02, 0.6)}
  counts = [{k: int(rng.integers(*sizes[k])) for k in sizes} for _ in range(nq)]
  picked = rng.choice(n, sum(sum(c.values()) for c in counts), replace=False)
  gnd, planted, at = [], {}, 0
  for i, c in enumerate(counts):
    g = {}
    for k, m in c.items():
      g[k] = np.sort(picked[at:at + m])
      at += m
      for j in g[k]:  # cos * q + sin * (a random direction, nearly orthogonal to q)
        u = unit_rows(rng.standard_normal((1, dim), dtype=np.float32))[0]
        u = unit_rows((u - (u @ q[i]) * q[i])[None])[0]
        cs = rng.uniform(*cos[k])
        planted[int(j)] = (cs * q[i] + np.sqrt(1 - cs * cs) * u).astype(np.float32)
    gnd.append({k: v.tolist() for k, v in g.items()})
  db = np.lib.format.open_memmap(os.path.join(d, "db.npy"), mode="w+", dtype=np.float32,
                                 shape=(n, dim))
  chunk = max(1, (256 << 20) // (4 * dim))
  t0 = time.perf_counter()
  for a in range(0, n, chunk):
    b = min(n, a + chunk)
    x = unit_rows(rng.standard_normal((b - a, dim), dtype=np.float32))
    for j in [j for j in planted if a <= j < b]:
      x[j - a] = planted[j]
    db[a:b] = x
    if a // chunk % 8 == 0:
      log(f"generating: {b}/{n} rows, {time.perf_counter() - t0:.0f} s")
  db.flush()
  del db
  np.save(os.path.join(d, "queries.npy"), q)
  with open(os.path.join(d, "gnd.json"), "w") as f:
    json.dump(gnd, f)


def load_inputs(d: str):
  with open(os.path.join(d, "gnd.json")) as f:
    gnd = [{k: np.asarray(v, np.int64) for k, v in g.items()} for g in json.load(f)]
  return np.load(os.path.join(d, "queries.npy")), gnd


# ----------------------------------------------------------------------------------------------
# The original's way, in the style of the reference tools (cnnimageretrieval-pytorch evaluate.py,
# CSA test.py): dense scores, a full argsort, a per-query Python loop.


def ref_compute_ap(ranks, nres):
  """AP by trapezoids over the (junk-adjusted, 0-based) ranks of the retrieved positives."""
  ap = 0.0
  recall_step = 1.0 / nres
  for j in np.arange(len(ranks)):
    rank = ranks[j]
    precision_0 = 1.0 if rank == 0 else float(j) / rank
    precision_1 = float(j + 1) / (rank + 1)
    ap += (precision_0 + precision_1) * recall_step / 2.0
  return ap


def ref_compute_map(ranks, gnd, kappas):
  """mAP, per-query APs, mP@k and per-query P@k over ranks (N, Q)."""
  nq = len(gnd)
  map_, nempty = 0.0, 0
  aps = np.zeros(nq)
  pr = np.zeros(len(kappas))
  prs = np.zeros((nq, len(kappas)))
  for i in np.arange(nq):
    qgnd = np.array(gnd[i]["ok"])
    if qgnd.shape[0] == 0:
      aps[i] = float("nan")
      prs[i, :] = float("nan")
      nempty += 1
      continue
    qgndj = np.array(gnd[i]["junk"])
    pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
    junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
    k, ij = 0, 0
    if len(junk):
      ip = 0
      while ip < len(pos):
        while ij < len(junk) and pos[ip] > junk[ij]:
          k += 1
          ij += 1
        pos[ip] = pos[ip] - k
        ip += 1
    ap = ref_compute_ap(pos, len(qgnd))
    map_ += ap
    aps[i] = ap
    pos += 1
    for j in np.arange(len(kappas)):
      kq = min(max(pos), kappas[j])
      prs[i, j] = (pos <= kq).sum() / kq
    pr = pr + prs[i, :]
  return map_ / (nq - nempty), aps, pr / (nq - nempty), prs


def ref_revisited(ranks, gnd, kappas):
  out = {}
  for name, ok, junk in (("easy", ("easy",), ("junk", "hard")),
                         ("medium", ("easy", "hard"), ("junk",)),
                         ("hard", ("hard",), ("junk", "easy"))):
    gnd_t = [{"ok": np.concatenate([g[k] for k in ok]),
              "junk": np.concatenate([g[k] for k in junk])} for g in gnd]
    m, aps, mp, prs = ref_compute_map(ranks, gnd_t, kappas)
    out[name] = {"map": m, "aps": aps, "mp": mp, "prs": prs}
  return out


def work_original(d: str) -> dict:
  qvecs, gnd = load_inputs(d)
  t0 = time.perf_counter()
  vecs = np.load(os.path.join(d, "db.npy"), mmap_mode="r")
  scores = np.dot(vecs, qvecs.T)  # (N, Q)
  t1 = time.perf_counter()
  ranks = np.argsort(-scores, axis=0)
  t2 = time.perf_counter()
  res = ref_revisited(ranks, gnd, KAPPAS)
  t3 = time.perf_counter()
  return {"results": res, "seconds": {"scores": t1 - t0, "argsort": t2 - t1, "evaluate": t3 - t2,
                                      "total": t3 - t0}}


def work_csa_jax(d: str, T: int, impl: str) -> dict:
  from csa_jax import log
  from csa_jax.evaluation import revisited
  from csa_jax.retrieval.search import top_k_search
  log.setup()  # the search's progress records, on stderr as csa-jax shows them
  q, gnd = load_inputs(d)
  t0 = time.perf_counter()
  db = np.load(os.path.join(d, "db.npy"), mmap_mode="r")
  scores = np.empty((len(q), len(db)), np.float32)
  top_k_search(q, db, T, scores_out=scores, progress=True, impl=impl)
  t1 = time.perf_counter()
  res = revisited.revisited_map_from_scores(scores, gnd)
  t2 = time.perf_counter()
  return {"results": res, "seconds": {"search": t1 - t0, "evaluate": t2 - t1, "total": t2 - t0}}


def table(res) -> str:
  from csa_jax.evaluation.revisited import format_results  # the reference tools' format
  return format_results(res, "bench", KAPPAS)


# ----------------------------------------------------------------------------------------------
# Driver: each way in its own process, which reports its own peak RSS.


def run_way(way: str, d: str, T: int) -> dict:
  way, t, impl = (way.split(":") + ["", ""])[:3]
  T = int(t or T)
  res_path = os.path.join(d, f"result_{way}.json")
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", way, "--dir", d, "--T", str(T),
         "--impl", impl or "auto"]
  t0 = time.perf_counter()
  status = subprocess.call(cmd)
  wall = time.perf_counter() - t0
  if status != 0:
    raise SystemExit(f"{way} worker failed with status {status}")
  with open(res_path) as f:
    out = json.load(f)
  out["process_wall_s"] = wall
  return out


def peak_rss_gb() -> float:
  """This process's peak resident set (VmHWM). Not ru_maxrss: after fork + exec that also
  counts the parent's resident size at the fork."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker(way: str, d: str, T: int, impl: str) -> None:
  out = work_original(d) if way == "original" else work_csa_jax(d, T, impl)
  res = out.pop("results")
  out["table"] = table(res)
  out["map_percent"] = {k: 100 * float(v["map"]) for k, v in res.items()}
  out["seconds"] = {k: round(v, 3) for k, v in out["seconds"].items()}
  out["peak_rss_gb"] = peak_rss_gb()
  out["T"] = T if way != "original" else None
  out["impl"] = impl if way != "original" else None
  with open(os.path.join(d, f"result_{way}.json"), "w") as f:
    json.dump(out, f)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=1001001, help="database descriptors")
  p.add_argument("--dim", type=int, default=2048)
  p.add_argument("--queries", type=int, default=70)
  p.add_argument("--T", type=int, default=100, help="first-round list kept by csa_jax's search")
  p.add_argument("--dir", default="/tmp", help="where the .npy goes (deleted at the end)")
  p.add_argument("--ways", default="original,csa_jax")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--keep", action="store_true", help="keep the generated files")
  p.add_argument("--reuse", default=None, metavar="DIR",
                 help="use the files a --keep run left in DIR: no generation, no deletion")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--impl", default="auto", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    worker(args.worker, args.dir, args.T, args.impl)
    return 0

  d = args.reuse or os.path.join(args.dir, f"bench_eval_r1m_{os.getpid()}")
  if args.reuse:
    shape = np.load(os.path.join(d, "db.npy"), mmap_mode="r").shape
    if shape != (args.n, args.dim) or len(load_inputs(d)[1]) != args.queries:
      raise SystemExit(f"--reuse {d}: holds a {shape} db, not ({args.n}, {args.dim}) with "
                       f"{args.queries} queries")
  else:
    os.makedirs(d)
  need_gb = args.n * args.dim * 4 / 2**30
  log(f"db {args.n} x {args.dim} float32 = {need_gb:.2f} GB in {d}")
  results = {"n": args.n, "dim": args.dim, "queries": args.queries, "T": args.T,
             "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_before": os.getloadavg()}
  try:
    t0 = time.perf_counter()
    if not args.reuse:
      generate(d, args.n, args.dim, args.queries)
      log(f"generated in {time.perf_counter() - t0:.0f} s")
    else:  # into the page cache, as just after generating: no way pays the disk for another
      with open(os.path.join(d, "db.npy"), "rb") as f:
        while f.read(64 << 20):
          pass
      log(f"read the db once in {time.perf_counter() - t0:.0f} s")
    for way in args.ways.split(","):
      log(f"running {way} (load average {os.getloadavg()[0]:.2f})")
      results[way] = r = run_way(way, d, args.T)
      results[way]["loadavg_after"] = os.getloadavg()
      log(f"{way}: {r['seconds']} s in the worker, {r['process_wall_s']:.1f} s with start-up, "
          f"peak RSS {r['peak_rss_gb']:.2f} GB")
      print(f"{way}:\n{r['table']}")
  finally:
    if not args.keep and not args.reuse:
      for f in os.listdir(d):
        os.remove(os.path.join(d, f))
      os.rmdir(d)
  for w in [w for w in results if w.startswith("csa_jax")] if "original" in results else []:
    a, b = results["original"], results[w]
    b["speedup_worker"] = a["seconds"]["total"] / b["seconds"]["total"]
    b["speedup_process"] = a["process_wall_s"] / b["process_wall_s"]
    b["same_table"] = a["table"] == b["table"]
    b["max_map_diff_percent"] = max(abs(a["map_percent"][p] - b["map_percent"][p])
                                    for p in a["map_percent"])
    print(f"{w}: speed-up {b['speedup_worker']:.1f}x in the worker "
          f"({b['speedup_process']:.1f}x with process start-up); peak RSS "
          f"{a['peak_rss_gb']:.2f} GB vs {b['peak_rss_gb']:.2f} GB; same table: "
          f"{b['same_table']} (max mAP difference {b['max_map_diff_percent']:.2e} %)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
