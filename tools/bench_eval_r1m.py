"""Benchmark: revisited evaluation at R1M scale, the original's way against csa_jax's.

  python tools/bench_eval_r1m.py [--n 1001001] [--dim 2048] [--queries 70] [--T 100]
                                 [--ways original,numpy_blocked,numpy_workers,csa_jax,
                                         csa_jax_checked,original_cli,original_cli_mmap,
                                         csa_jax_cli]
                                 [--dir /tmp] [--out results.json] [--keep | --reuse DIR]

Generates ``--n`` random L2-normalised descriptors into a .npy in ``--dir`` (in chunks: 8 GB at
full size never sits in RAM), with planted positives / junk for ``--queries`` random queries
(ROxf-like list sizes, cosines spread so that some positives rank deep), and a ROxf-sized test set
for the command line (``--queries`` queries, 4,993 db images with their own planted positives,
``testset/feats.npz`` and ``testset/gnd_bench.json``; the .npy is its R1M), then runs each way in
its own subprocess, so that peak RSS is separate, end to end from descriptors to the E/M/H table.
In the worker (seconds from loading the db to the table; process start-up excluded):

  original:      dense scores (numpy, db as a memmap), full argsort of every column, and the
                 reference tools' per-query loop evaluator (compute_ap / compute_map, written here
                 in their style);
  numpy_blocked: the floor: ``q @ db.T`` in numpy over the same memory-mapped rows, 128 MB blocks
                 into one reused buffer, keeping nothing but the dot products (no table);
  numpy_workers: the same dot products laid out as csa_jax's CPU search runs them (32 MB blocks,
                 a single-threaded sgemm each, one thread per core): what is left beyond them is
                 the search's own cost;
  csa_jax:       blocked top-T search with every score as a by-product
                 (``csa_jax.retrieval.search.top_k_search``: on CPU BLAS sgemm workers, one per
                 core, straight into the scores and a numpy running top-T; on accelerators XLA) and
                 the exact evaluator (``revisited_map_from_scores``, queries shared out to one
                 thread per core: ``csa_jax.evaluation.evaluate.results_from_scores``), as
                 ``csa-jax eval`` (``csa_jax:T`` keeps a top-T list of another length, e.g.
                 1024 for re-ranking; ``csa_jax:T:jax`` forces the search's jax implementation,
                 the accelerators' one, ``csa_jax:T:host`` the CPU one);
  csa_jax_checked: csa_jax with the db as ``csa-jax eval`` loads R1M
                 (``data.large_descriptors.load_r1m(..., defer=True)``: every row checked, finite,
                 non-zero and unit-norm, as the search scores it).

As whole processes (wall time around the subprocess: start-up, imports, reading the files), on the
test set plus the .npy as R1M distractors:

  original_cli:  the original pipeline as the reference test script runs it: the features file
                 and gnd read, R1M read whole into RAM (``np.load``; the original unpickles it),
                 ``np.dot(qvecs, vecs.T)`` per part (not concatenated first, which the original
                 does: 8 GB less to copy), ``np.argsort(-scores, axis=1).T`` and the loop
                 evaluator;
  original_cli_mmap: the same with R1M memory-mapped instead (cheaper than the original: no 8 GB
                 read into RAM);
  csa_jax_cli:   the real command line, ``csa-jax eval --features F --gnd G --r1m R.npy --out ..``
                 (writing its JSON and per-query plot included).

Prints time and peak RSS of each way, checks that the ways print the same table, and prints the
ratios: original / csa_jax in the worker, csa_jax's search / each floor, original_cli (and
original_cli_mmap) / csa_jax_cli. Before each way the .npy is read once, so that it is in the
page cache for every way alike (original_cli's 8 GB read can evict it). The files are deleted at
the end unless ``--keep`` (``--keep --ways ''`` only generates them); ``--reuse DIR`` runs on the
files a ``--keep`` run left in DIR (same ``--n``, ``--dim``, ``--queries``) without generating
(except a missing test set) or deleting them. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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


def generate(d: str, n: int, dim: int, nq: int, seed: int = 0, sizes=None) -> None:
  rng = np.random.default_rng(seed)
  q = unit_rows(rng.standard_normal((nq, dim), dtype=np.float32))
  sizes = sizes or {"easy": (5, 80), "hard": (10, 120), "junk": (10, 150)}
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


TEST_DB = 4993  # ROxf's db images
TEST_SIZES = {"easy": (2, 20), "hard": (3, 30), "junk": (3, 30)}  # 70 queries' lists fit in 4993


def test_set_files(d: str) -> tuple[str, str]:
  return os.path.join(d, "testset", "feats.npz"), os.path.join(d, "testset", "gnd_bench.json")


def generate_test_set(d: str, dim: int, nq: int) -> None:
  """The command line's test set: 'db' / 'query' descriptors and a gnd, as csa-jax eval reads."""
  t = os.path.join(d, "testset")
  os.makedirs(t, exist_ok=True)
  generate(t, TEST_DB, dim, nq, seed=1, sizes=TEST_SIZES)
  q, gnd = load_inputs(t)
  feats, gnd_path = test_set_files(d)
  np.savez(feats, db=np.load(os.path.join(t, "db.npy")), query=q)
  with open(gnd_path, "w") as f:
    json.dump({"gnd": [{k: v.tolist() for k, v in g.items()} for g in gnd]}, f)


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


def work_original_cli(d: str, mmap: bool = False) -> dict:
  """The reference test script's way on the test set + R1M, from its files (see the docstring)."""
  t0 = time.perf_counter()
  feats, gnd_path = test_set_files(d)
  feature = np.load(feats)
  qvecs, vecs = feature["query"], feature["db"]
  with open(gnd_path) as f:
    gnd = [{k: np.asarray(v, np.int64) for k, v in g.items()} for g in json.load(f)["gnd"]]
  # Read whole, as the original reads its R1M (or, for comparison, memory-mapped).
  r1m = np.load(os.path.join(d, "db.npy"), mmap_mode="r" if mmap else None)
  t1 = time.perf_counter()
  scores = np.concatenate([np.dot(qvecs, vecs.T), np.dot(qvecs, r1m.T)], axis=1)  # (Q, N)
  t2 = time.perf_counter()
  ranks = np.argsort(-scores, axis=1).T
  t3 = time.perf_counter()
  res = ref_revisited(ranks, gnd, KAPPAS)
  t4 = time.perf_counter()
  return {"results": res, "name": "bench+1m",
          "seconds": {"read": t1 - t0, "scores": t2 - t1, "argsort": t3 - t2, "evaluate": t4 - t3,
                      "total": t4 - t0}}


def work_numpy_blocked(d: str) -> dict:
  """The floor: the dot products alone, numpy over the memmap in 128 MB blocks."""
  q, _ = load_inputs(d)
  t0 = time.perf_counter()
  db = np.load(os.path.join(d, "db.npy"), mmap_mode="r")
  rows = max(1, (128 << 20) // (4 * db.shape[1]))
  buf = np.empty((len(q), rows), np.float32)
  for a in range(0, len(db), rows):
    x = db[a:a + rows]
    np.matmul(q, x.T, out=buf[:, :len(x)])
  return {"results": None, "seconds": {"scores": time.perf_counter() - t0,
                                       "total": time.perf_counter() - t0}}


def work_numpy_workers(d: str) -> dict:
  """The dot products alone as csa_jax's CPU search runs them: a single-threaded sgemm per 32 MB
  block, in one thread per core (the floor of that layout)."""
  import threading

  from csa_jax.retrieval import host_search
  q, _ = load_inputs(d)
  setter = host_search._thread_blas_setter()  # pylint: disable=protected-access
  workers = host_search.cores() if setter is not None else 1
  t0 = time.perf_counter()
  db = np.load(os.path.join(d, "db.npy"), mmap_mode="r")
  rows = max(1, (32 << 20) // (4 * db.shape[1]))

  def work(w: int):
    if workers > 1:
      setter(1)
    buf = np.empty((len(q), rows), np.float32)
    for a in range(w * rows, len(db), workers * rows):
      x = db[a:a + rows]
      np.matmul(q, x.T, out=buf[:, :len(x)])

  threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return {"results": None, "workers": workers,
          "seconds": {"scores": time.perf_counter() - t0, "total": time.perf_counter() - t0}}


def work_csa_jax(d: str, T: int, impl: str, checked: bool = False) -> dict:
  from csa_jax import log
  from csa_jax.data import large_descriptors
  from csa_jax.evaluation import evaluate
  from csa_jax.retrieval.search import top_k_search
  log.setup()  # the search's progress records, on stderr as csa-jax shows them
  q, gnd = load_inputs(d)
  t0 = time.perf_counter()
  path = os.path.join(d, "db.npy")
  db = large_descriptors.load_r1m(path, defer=True) if checked else np.load(path, mmap_mode="r")
  scores = np.empty((len(q), len(db)), np.float32)
  top_k_search(q, db, T, scores_out=scores, progress=True, impl=impl)
  t1 = time.perf_counter()
  res = evaluate.results_from_scores(scores, gnd)  # as evaluate() runs it
  t2 = time.perf_counter()
  return {"results": res, "seconds": {"search": t1 - t0, "evaluate": t2 - t1, "total": t2 - t0}}


def table(res, name: str = "bench") -> str:
  from csa_jax.evaluation.revisited import format_results  # the reference tools' format
  return format_results(res, name, KAPPAS)


# ----------------------------------------------------------------------------------------------
# Driver: each way in its own process, which reports its own peak RSS.


def warm(d: str) -> float:
  """Reads the .npy once, into the page cache (another way's 8 GB read may have evicted it)."""
  t0 = time.perf_counter()
  with open(os.path.join(d, "db.npy"), "rb") as f:
    while f.read(64 << 20):
      pass
  return time.perf_counter() - t0


def timed(cmd, **kw) -> tuple[int, float, float, str]:
  """(exit status, wall seconds, the child's peak RSS in GB, its stdout) of one command."""
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **kw)
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
  proc.returncode = os.waitstatus_to_exitcode(status)
  return proc.returncode, wall, usage.ru_maxrss / 2**20, out


def csa_jax_command() -> list[str]:
  """The installed ``csa-jax`` beside this Python, else ``python -m csa_jax.cli``."""
  exe = os.path.join(os.path.dirname(sys.executable), "csa-jax")
  return [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "csa_jax.cli"]


def run_cli(d: str) -> dict:
  """``csa-jax eval`` on the test set + R1M as one process; its table and its own times."""
  feats, gnd = test_set_files(d)
  res_path = os.path.join(d, "result_csa_jax_cli_eval.json")
  cmd = csa_jax_command() + ["eval", "--features", feats, "--gnd", gnd, "--r1m",
                             os.path.join(d, "db.npy"), "--out", res_path]
  status, wall, rss, out = timed(cmd)
  if status != 0:
    raise SystemExit(f"csa-jax eval failed with status {status}")
  with open(res_path) as f:
    js = json.load(f)
  return {"table": out.strip(), "seconds": js["seconds"], "process_wall_s": wall,
          "peak_rss_gb": rss, "command": cmd,
          "map_percent": {k: v["map"] for k, v in js["first_round"].items()}}


def run_way(way: str, d: str, T: int) -> dict:
  if way == "csa_jax_cli":
    return run_cli(d)
  way, t, impl = (way.split(":") + ["", ""])[:3]
  T = int(t or T)
  res_path = os.path.join(d, f"result_{way}.json")
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", way, "--dir", d, "--T", str(T),
         "--impl", impl or "auto"]
  status, wall, _, _ = timed(cmd)
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
  if way == "original":
    out = work_original(d)
  elif way in ("original_cli", "original_cli_mmap"):
    out = work_original_cli(d, mmap=way == "original_cli_mmap")
  elif way == "numpy_blocked":
    out = work_numpy_blocked(d)
  elif way == "numpy_workers":
    out = work_numpy_workers(d)
  elif way in ("csa_jax", "csa_jax_checked"):
    out = work_csa_jax(d, T, impl, checked=way == "csa_jax_checked")
  else:
    raise SystemExit(f"unknown way {way!r}")
  res = out.pop("results")
  if res is not None:
    out["table"] = table(res, out.pop("name", "bench"))
    out["map_percent"] = {k: 100 * float(v["map"]) for k, v in res.items()}
  out["seconds"] = {k: round(v, 3) for k, v in out["seconds"].items()}
  out["peak_rss_gb"] = peak_rss_gb()
  out["T"] = T if way.startswith("csa_jax") else None
  out["impl"] = impl if way.startswith("csa_jax") else None
  with open(os.path.join(d, f"result_{way}.json"), "w") as f:
    json.dump(out, f)


def compare(results: dict) -> None:
  """The ratios, printed and added to the results."""
  if "original" in results:
    a = results["original"]
    for w in [w for w in results if w.startswith("csa_jax") and w != "csa_jax_cli"]:
      b = results[w]
      b["speedup_worker"] = a["seconds"]["total"] / b["seconds"]["total"]
      b["speedup_process"] = a["process_wall_s"] / b["process_wall_s"]
      b["same_table"] = a["table"] == b["table"]
      b["max_map_diff_percent"] = max(abs(a["map_percent"][p] - b["map_percent"][p])
                                      for p in a["map_percent"])
      print(f"{w}: speed-up {b['speedup_worker']:.1f}x in the worker "
            f"({b['speedup_process']:.1f}x with process start-up); peak RSS "
            f"{a['peak_rss_gb']:.2f} GB vs {b['peak_rss_gb']:.2f} GB; same table: "
            f"{b['same_table']} (max mAP difference {b['max_map_diff_percent']:.2e} %)")
  for floor_way, key in (("numpy_blocked", "search_vs_floor"),
                         ("numpy_workers", "search_vs_workers_floor")):
    if floor_way not in results:
      continue
    floor = results[floor_way]["seconds"]["scores"]
    for w in [w for w in results if w.startswith("csa_jax") and w != "csa_jax_cli"]:
      b = results[w]
      b[key] = b["seconds"]["search"] / floor
      print(f"{w}: search {b['seconds']['search']:.2f} s = {b[key]:.2f}x the {floor_way} "
            f"floor ({floor:.2f} s)")
  for orig, key in (("original_cli", "speedup_process"),
                    ("original_cli_mmap", "speedup_process_vs_mmap")):
    if orig in results and "csa_jax_cli" in results:
      a, b = results[orig], results["csa_jax_cli"]
      b[key] = a["process_wall_s"] / b["process_wall_s"]
      b["same_table"] = a["table"] == b["table"]
      print(f"csa_jax_cli: speed-up {b[key]:.1f}x as a whole process against {orig} "
            f"({a['process_wall_s']:.1f} s -> {b['process_wall_s']:.1f} s); peak RSS "
            f"{a['peak_rss_gb']:.2f} GB vs {b['peak_rss_gb']:.2f} GB; same table: "
            f"{b['same_table']}")


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=1001001, help="database descriptors")
  p.add_argument("--dim", type=int, default=2048)
  p.add_argument("--queries", type=int, default=70)
  p.add_argument("--T", type=int, default=100, help="first-round list kept by csa_jax's search")
  p.add_argument("--dir", default="/tmp", help="where the .npy goes (deleted at the end)")
  p.add_argument("--ways", default="original,numpy_blocked,numpy_workers,csa_jax,csa_jax_checked,"
                 "original_cli,original_cli_mmap,csa_jax_cli")
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
  cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which(
      "lscpu") else ""
  results = {"n": args.n, "dim": args.dim, "queries": args.queries, "T": args.T,
             "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_before": os.getloadavg(),
             "cpu": next((line.split(":", 1)[1].strip() for line in cpu.splitlines()
                          if line.startswith("Model name")), None), "cores": os.cpu_count()}
  log(f"CPU: {results['cpu']}, {results['cores']} cores; {results['date']}")
  try:
    t0 = time.perf_counter()
    if not args.reuse:
      generate(d, args.n, args.dim, args.queries)
      log(f"generated in {time.perf_counter() - t0:.0f} s")
    if not os.path.exists(test_set_files(d)[1]):
      generate_test_set(d, args.dim, args.queries)
    for way in [w for w in args.ways.split(",") if w]:  # --keep --ways '': generate only
      log(f"read the db once in {warm(d):.0f} s; running {way} (load average "
          f"{os.getloadavg()[0]:.2f})")
      results[way] = r = run_way(way, d, args.T)
      results[way]["loadavg_after"] = os.getloadavg()
      log(f"{way}: {r['seconds']} s in the worker, {r['process_wall_s']:.1f} s with start-up, "
          f"peak RSS {r['peak_rss_gb']:.2f} GB")
      if "table" in r:
        print(f"{way}:\n{r['table']}")
  finally:
    if not args.keep and not args.reuse:
      shutil.rmtree(d)
  compare(results)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
