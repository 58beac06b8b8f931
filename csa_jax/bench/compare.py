"""``csa-jax bench``: csa_jax against the original architecture in PyTorch, same weights, one run.

For each implementation (csa_jax; PyTorch eager as the original runs it; PyTorch + torch.compile):
(a) re-rank throughput in queries/s, affinity construction from C-d descriptors included;
(b) training throughput in samples/s (SGD momentum 0.9, the CSA loss, dropouts on);
(c) the first call (compilation) apart from the steady state; (d) achieved FLOP/s by the cost model
of docs/method.md section 9 and its fraction of a matmul peak measured in the same run; (e) peak memory.
Before any timing both sides must give the same scores (float32, <= --tol): the race is fair.

Calls of the contestants are interleaved round by round, so load from other processes on a shared
machine hits every contestant alike; the median of the rounds is reported. Progress goes to
stderr, the table to stdout, everything (with a machine description) to a JSON file.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from csa_jax.bench import machine as bench_env
from csa_jax.bench import race as br
from csa_jax.core.affinity import training_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.errors import fail
from csa_jax.fileio import check_output_path, write_json

SCHEMA = "csa_jax.bench.compare/1"


def _int_list(text: str) -> list[int]:
  try:
    vals = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    vals = []
  if not vals or min(vals) < 1:
    raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, found {text!r}")
  return vals


def _positive(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    v = 0
  if v < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
  return v


def parse_args(argv):
  p = argparse.ArgumentParser(prog="csa-jax bench", description=__doc__.split("\n\n")[0])
  g = p.add_argument_group("model (defaults: the paper model)")
  g.add_argument("--anchors", "-L", type=_positive, default=512)
  g.add_argument("--dim", type=_positive, default=768)
  g.add_argument("--depth", type=_positive, default=2)
  g.add_argument("--heads", type=_positive, default=12)
  g.add_argument("--mlp-ratio", type=_positive, default=4)
  g.add_argument("--dropout", type=float, default=0.1,
                 help="dropout, attention dropout and drop-path rate in training (paper: 0.1)")
  g = p.add_argument_group("re-ranking")
  g.add_argument("--k", "-K", type=_positive, default=1024,
                 help="candidates re-ranked per query")
  g.add_argument("--batches", type=_int_list, default=None,
                 help="query batch sizes (default: 1,8,64 on an accelerator, 1,8 on CPU)")
  g.add_argument("--descriptor-dim", type=_positive, default=2048, help="C, descriptor size")
  g.add_argument("--db", type=_positive, default=4096, help="database size (>= K)")
  g = p.add_argument_group("training")
  g.add_argument("--train-k", type=_positive, default=512, help="tokens per training sample")
  g.add_argument("--train-batch", type=_positive, default=None,
                 help="training batch (default: 256 on an accelerator, halved until it fits; "
                 "8 on CPU)")
  g.add_argument("--no-train", action="store_true")
  g = p.add_argument_group("run")
  g.add_argument("--repeats", type=_positive, default=None,
                 help="timed rounds (default 10; 3 on CPU)")
  g.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                 help="csa_jax compute dtype; auto: bfloat16 on an accelerator, else float32")
  g.add_argument("--torch-device", default="auto", help="auto: cuda if available, else cpu")
  g.add_argument("--no-torch", action="store_true", help="csa_jax only (no parity check)")
  g.add_argument("--no-compile", action="store_true", help="skip torch.compile")
  g.add_argument("--matmul-size", type=_positive, default=None,
                 help="square matmul for the peak (default 8192 accel., 2048 CPU)")
  g.add_argument("--tol", type=float, default=1e-4, help="float32 parity tolerance on scores")
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--out", default="bench_results.json", help="JSON results (atomic write)")
  return p.parse_args(argv)


def run(args, argv=()) -> dict:
  """Runs the whole benchmark; returns the results dict (also written to ``args.out``)."""
  check_output_path(args.out)  # before minutes of benchmarking, not after
  accel = jax.default_backend() != "cpu"
  batches = args.batches or ([1, 8, 64] if accel else [1, 8])
  repeats = args.repeats if args.repeats is not None else (10 if accel else 3)
  dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if accel else "float32")
  try:
    cfg = ModelConfig(anchors=args.anchors, dim=args.dim, depth=args.depth, heads=args.heads,
                      mlp_ratio=args.mlp_ratio, drop=args.dropout, attn_drop=args.dropout,
                      drop_path=args.dropout)
  except ValueError as e:
    raise fail("command line", "model", "a valid model shape", str(e)) from None
  run_cfg = cfg.replace(dtype=dtype)
  if args.db < max(args.k, args.anchors - 1, args.train_k, args.anchors):
    raise fail("--db", "db", f">= K, L-1 and train K ({max(args.k, args.anchors, args.train_k)})",
               str(args.db))
  tm = None if args.no_torch else bench_env.try_import_torch_model()
  tdev = bench_env.torch_device(args.torch_device) if tm else None
  sync = br.torch_sync(tdev) if tm else None
  res = {"schema": SCHEMA, "command": " ".join(["csa-jax", "bench", *argv]),
         "machine": bench_env.machine_info(tdev),
         "config": {"model": cfg.__dict__ | {"dtype": dtype}, "K": args.k,
                    "descriptor_dim": args.descriptor_dim, "db": args.db, "batches": batches,
                    "train_k": args.train_k, "repeats": repeats, "seed": args.seed,
                    "torch_autocast_fp16": bool(tm and tdev.type == "cuda")},
         "notes": [], "rerank": [], "train": []}
  if not tm:
    res["notes"].append("PyTorch side skipped (--no-torch or torch not installed)")
  if not accel and args.batches is None:
    res["notes"].append("CPU: re-rank batch 64 skipped by default for time; --batches 1,8,64")
  res["notes"].append("csa_jax training step: train_step.make_batch_train_step + "
                      "optim.make_optimizer (SGD momentum 0.9, wd 1e-6 on weights), ready batch")

  # Data: random unit descriptors and their first-round ranking (not timed: the re-ranker's input).
  rng = np.random.default_rng(args.seed)
  db = _unit(rng.standard_normal((args.db, args.descriptor_dim), np.float32))
  q = _unit(rng.standard_normal((max(batches), args.descriptor_dim), np.float32))
  t = max(args.k, args.anchors - 1)
  top = np.argsort(-(q @ db.T), axis=1)[:, :t].astype(np.int32)
  params = br.init_jitted(cfg, jax.random.key(args.seed))
  dbj = jnp.asarray(db)
  if tm:
    tmodel = tm.torch_model_from_params(params, cfg, tdev)
    dbt = bench_env.to_torch(db, tdev)
    br.progress("parity: csa_jax vs PyTorch scores (float32)")
    n = min(2, max(batches))
    diff = br.rerank_parity(params, cfg, tmodel, q[:n], db, top[:n], args.k, args.tol)
    res["parity"] = {"checked": True, "rerank_max_abs_diff": diff, "tol": args.tol,
                     "queries": n, "dtype": "float32"}
    jax.clear_caches()  # so csa_jax's first timed call pays its compilation, as a user's would
  else:
    res["parity"] = {"checked": False}

  mm_size = args.matmul_size or (8192 if accel else 2048)
  br.progress(f"matmul peak ({mm_size}^3, {dtype})")
  res["matmul_peak"] = br.matmul_peak(mm_size, dtype, tdev if tm else None)
  peak = res["matmul_peak"]["device_peak_flops"]
  memory = bench_env.memory_probe(tdev)

  for b in batches:
    fns = {br.JAX: br.jax_rerank_fn(params, run_cfg, jnp.asarray(q[:b]), dbj,
                                    jnp.asarray(top[:b]), args.k)}
    if tm:
      qt, topt = bench_env.to_torch(q[:b], tdev), bench_env.to_torch(top[:b], tdev)
      fns[br.EAGER] = br.torch_rerank_fn(tmodel, qt, dbt, topt, args.k, cfg.anchors, sync)
      if not args.no_compile:
        fns[br.COMPILED] = br.torch_rerank_fn(tmodel, qt, dbt, topt, args.k, cfg.anchors, sync,
                                              compiled=True)
    timed = br.race(fns, repeats, memory, f"re-rank batch {b}")
    res["rerank"] += _rows(timed, b, br.rerank_flops(cfg, args.k, args.descriptor_dim), peak)

  if not args.no_train:
    res["train"] = _train(args, cfg, run_cfg, params, db, tm, tdev, sync, repeats, memory, peak,
                          accel, res)
  res["machine"]["loadavg_end"] = list(os.getloadavg())
  write_json(args.out, res)
  return res


def _train(args, cfg, run_cfg, params, db, tm, tdev, sync, repeats, memory, peak, accel, res):
  alpha, lr = 0.2, 1e-3
  k = args.train_k
  # Training samples as docs/method.md section 2: neighbours inside the set, random cluster labels.
  nbrs = np.argsort(-(db @ db.T), axis=1)[:, :max(k, cfg.anchors)].astype(np.int32)
  clusters = np.random.default_rng(args.seed + 1).integers(0, 16, len(db)).astype(np.int32)
  bt = args.train_batch or (256 if accel else 8)
  while True:
    idx = jnp.arange(bt, dtype=jnp.int32) % len(db)
    aff, targets = training_affinity(jnp.asarray(db), jnp.asarray(nbrs), jnp.asarray(clusters),
                                     idx, k, cfg.anchors)
    fns = {br.JAX: br.jax_train_fn(params, run_cfg, aff, targets, lr, alpha, args.seed)}
    if tm:
      if "train_loss_max_abs_diff" not in res["parity"]:
        n = min(2, bt)
        res["parity"]["train_loss_max_abs_diff"] = br.loss_parity(
            params, cfg, tm.torch_model_from_params(params, cfg, tdev), aff[:n], targets[:n],
            alpha, args.tol)
      at, yt = bench_env.to_torch(np.asarray(aff), tdev), bench_env.to_torch(
          np.asarray(targets), tdev)
      fns[br.EAGER] = br.torch_train_fn(tm.torch_model_from_params(params, cfg, tdev), at, yt,
                                        lr, alpha, sync)
      if not args.no_compile:
        fns[br.COMPILED] = br.torch_train_fn(tm.torch_model_from_params(params, cfg, tdev), at,
                                           yt, lr, alpha, sync, compiled=True)
    timed = br.race(fns, repeats, memory, f"train batch {bt}")
    oom = [n for n, r in timed.items() if r.get("error", "").startswith("out of memory")]
    if not oom or bt == 1 or args.train_batch:
      break
    res["notes"].append(f"train batch {bt}: out of memory for {oom}; halving")
    bt //= 2
    del fns, timed
  return _rows(timed, bt, br.train_flops(cfg, k), peak)


def _rows(timed: dict, batch: int, flops_per_item: float, peak: float) -> list[dict]:
  rows = []
  eager = timed.get(br.EAGER, {}).get("steady_median_s")
  for name, r in timed.items():
    row = {"impl": name, "batch": batch, **r}
    med = r.get("steady_median_s")
    if med:
      row["compile_s"] = max(r["first_call_s"] - med, 0.0)  # the first call's extra cost
      row["items_per_s"] = batch / med
      row["flops_per_item"] = flops_per_item
      row["achieved_flops"] = flops_per_item * batch / med
      row["frac_of_matmul_peak"] = row["achieved_flops"] / peak
      row["speedup_vs_torch_eager"] = eager / med if eager else None
    rows.append(row)
  return rows


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def format_table(res: dict) -> str:
  m, mp = res["machine"], res["matmul_peak"]
  cfgd = res["config"]
  lines = [
      f"csa-jax bench  {m['date']}  {m['cpu_model']} ({m['cpu_count']} CPUs)  jax "
      f"{m['jax_version']} on {m['jax_backend']} [{m['jax_device']}]  torch "
      f"{m.get('torch_version')} on {m.get('torch_device')}",
      f"model L={cfgd['model']['anchors']} D={cfgd['model']['dim']} depth "
      f"{cfgd['model']['depth']} H={cfgd['model']['heads']}, csa_jax dtype "
      f"{cfgd['model']['dtype']}, torch fp16 autocast {cfgd['torch_autocast_fp16']}",
      f"matmul peak {mp['size']}^3 {mp['dtype']}: jax {mp['jax_flops'] / 1e9:.1f} GFLOP/s"
      + (f", torch {mp['torch_flops'] / 1e9:.1f} GFLOP/s" if "torch_flops" in mp else ""),
  ]
  par = res["parity"]
  lines.append("parity: " + (
      f"max |scores diff| {par['rerank_max_abs_diff']:.2e}"
      + (f", |loss diff| {par['train_loss_max_abs_diff']:.2e}"
         if "train_loss_max_abs_diff" in par else "") + f" (tol {par['tol']:g}) OK"
      if par["checked"] else "not checked (no torch)"))
  hdr = (f"{'':6}{'batch':>6}  {'impl':<14}{'first s':>9}{'steady s':>10}{'items/s':>10}"
         f"{'x eager':>9}{'GFLOP/s':>9}{'%peak':>7}{'mem MiB':>9}")
  for part, unit in (("rerank", f"re-ranking K={cfgd['K']} (affinity included), queries/s"),
                     ("train", f"training K={cfgd['train_k']}, samples/s")):
    if not res[part]:
      continue
    lines += ["", unit, hdr]
    for r in res[part]:
      if "error" in r:
        lines.append(f"{part[:6]:6}{r['batch']:>6}  {r['impl']:<14}{r['error']}")
        continue
      sp = r.get("speedup_vs_torch_eager")
      mem = r.get("peak_mem_bytes")
      lines.append(
          f"{part[:6]:6}{r['batch']:>6}  {r['impl']:<14}{r['first_call_s']:>9.2f}"
          f"{r['steady_median_s']:>10.3f}{r['items_per_s']:>10.2f}"
          f"{(f'{sp:.2f}' if sp else '-'):>9}{r['achieved_flops'] / 1e9:>9.1f}"
          f"{100 * r['frac_of_matmul_peak']:>7.1f}"
          f"{(f'{mem / 2**20:.0f}' if mem is not None else '-'):>9}")
  lines += [""] + [f"note: {n}" for n in res["notes"]]
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  # Before JAX touches a GPU: do not grab 75% of its memory, PyTorch runs in the same process.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  args = parse_args(argv)
  res = run(args, argv)
  print(format_table(res))
  br.progress(f"results written to {args.out}")
  return 0
