"""``csa-jax bench``: csa_jax against the original architecture in PyTorch, same weights, one run.

Measures re-rank and training throughput, compilation, FLOP/s against a matmul peak and peak
memory of csa_jax, PyTorch eager and torch.compile, after checking both sides compute the same
scores and loss (float32, <= --tol). Calls of the contestants are interleaved round by round, so
load from other processes on a shared machine hits every contestant alike; the median of the
rounds is reported. Progress goes to stderr, the table to stdout, everything (with a machine
description) to a JSON file. ``--attention xla,chunked`` races one csa_jax per attention
implementation; ``--curves DIR`` adds cost curves (time and memory against K and the batch) as
PNGs and JSON.
"""

from __future__ import annotations

import argparse
import os
import sys

from csa_jax.bench import benchmark
from csa_jax.bench import curves as curves_lib
from csa_jax.core.config import ATTENTIONS
from csa_jax.fileio import check_distinct


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


def _attention_list(text: str) -> list[str]:
  vals = [v.strip() for v in text.split(",") if v.strip()]
  if not vals or any(v not in ATTENTIONS for v in vals) or len(set(vals)) < len(vals):
    raise argparse.ArgumentTypeError(
        f"expected distinct comma-separated values of {', '.join(ATTENTIONS)}, found {text!r}")
  return vals


def parse_args(argv) -> benchmark.Settings:
  """The command line as ``benchmark.Settings``; argparse exits with code 2 on a bad flag."""
  p = argparse.ArgumentParser(prog="csa-jax bench", description=__doc__.split("\n\n")[0])
  g = p.add_argument_group("model (defaults: the paper model)")
  g.add_argument("--anchors", "-L", type=_positive, default=512)
  g.add_argument("--dim", type=_positive, default=768)
  g.add_argument("--depth", type=_positive, default=2)
  g.add_argument("--heads", type=_positive, default=12)
  g.add_argument("--mlp-ratio", type=_positive, default=4)
  g.add_argument("--dropout", type=float, default=0.1,
                 help="dropout, attention dropout and drop-path rate in training (paper: 0.1)")
  g.add_argument("--attention", type=_attention_list, default=["auto"],
                 help=f"csa_jax attention implementation ({', '.join(ATTENTIONS)}); a comma "
                 "list races one csa_jax[a] per value, the first standing for csa_jax")
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
  g.add_argument("--no-warm-start", action="store_true",
                 help="skip the warm start (two extra processes: a cold and a warm first call)")
  g.add_argument("--no-train", action="store_true",
                 help="no training race in the table (--curves still sweeps training)")
  g = p.add_argument_group("cost curves (csa_jax and PyTorch eager; --repeats rounds a point)")
  g.add_argument("--curves", metavar="DIR", default=None,
                 help="also write curves.json and rerank_vs_k.png, rerank_vs_batch.png, "
                 "train_vs_batch.png into DIR")
  g.add_argument("--curve-ks", type=_int_list, default=None,
                 help="K axis of time per query (default 128,256,512,1024,2048)")
  g.add_argument("--curve-k-batch", type=_positive, default=None,
                 help="query batch of the K curve (default 8 accel., 1 CPU)")
  g.add_argument("--curve-batches", type=_int_list, default=None,
                 help="query batches at --k (default 1,8,32,128,256 accel., 1,2,4,8 CPU)")
  g.add_argument("--curve-train-batches", type=_int_list, default=None,
                 help="training batches at --train-k (default 32,64,128,256 accel., 1,2,4 CPU)")
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
  a = p.parse_args(argv)
  return benchmark.Settings(
      anchors=a.anchors, dim=a.dim, depth=a.depth, heads=a.heads, mlp_ratio=a.mlp_ratio,
      dropout=a.dropout, k=a.k, batches=a.batches, descriptor_dim=a.descriptor_dim, db=a.db,
      train_k=a.train_k, train_batch=a.train_batch, train=not a.no_train,
      warm_start=not a.no_warm_start, repeats=a.repeats, dtype=a.dtype, torch=not a.no_torch,
      torch_device=a.torch_device,
      compile=not a.no_compile, matmul_size=a.matmul_size, tol=a.tol, seed=a.seed, out=a.out,
      attention=a.attention, curves=a.curves, curve_ks=a.curve_ks, curve_k_batch=a.curve_k_batch,
      curve_batches=a.curve_batches, curve_train_batches=a.curve_train_batches)


def format_table(res: dict) -> str:
  """The results of ``benchmark.run_benchmark`` as the text table ``csa-jax bench`` prints."""
  m, mp = res["machine"], res["matmul_peak"]
  cfgd = res["config"]
  lines = [
      (f"csa-jax bench  {m['date']}  {m['cpu_model']} ({m['cpu_count']} CPUs)  jax "
       f"{m['jax_version']} on {m['jax_backend']} [{m['jax_device']}]  torch "
       f"{m.get('torch_version')} on {m.get('torch_device')}"),
      (f"model L={cfgd['model']['anchors']} D={cfgd['model']['dim']} depth "
       f"{cfgd['model']['depth']} H={cfgd['model']['heads']}, csa_jax dtype "
       f"{cfgd['model']['dtype']}, torch fp16 autocast {cfgd['torch_autocast_fp16']}"),
      "csa_jax attention: " + ", ".join(
          f"{n} {a['asked']} (re-rank {a['rerank']}, train {a['train']})"
          for n, a in cfgd["attention"].items())
      + (f"; csa_jax = {cfgd['csa_jax']}" if len(cfgd["attention"]) > 1 else ""),
      f"matmul peak {mp['size']}^3 {mp['dtype']}: jax {mp['jax_flops'] / 1e9:.1f} GFLOP/s"
      + (f", torch {mp['torch_flops'] / 1e9:.1f} GFLOP/s" if "torch_flops" in mp else ""),
  ]
  par = res["parity"]
  lines.append("parity: " + (
      f"max |scores diff| {par['rerank_max_abs_diff']:.2e}"
      + (f", |loss diff| {par['train_loss_max_abs_diff']:.2e}"
         if "train_loss_max_abs_diff" in par else "") + f" (tol {par['tol']:g}"
      + (f", worst of {len(par['per_impl'])} csa_jax" if len(par.get("per_impl", {})) > 1
         else "") + ") OK"
      if par["checked"] else "not checked (no torch)"))
  w = max([14] + [len(r["impl"]) + 2 for r in res["rerank"] + res["train"]])
  hdr = (f"{'':6}{'batch':>6}  {'impl':<{w}}{'first s':>9}{'steady s':>10}{'items/s':>10}"
         f"{'x eager':>9}{'GFLOP/s':>9}{'%peak':>7}{'mem MiB':>9}{'MiB/item':>10}"
         "  attention ran")
  for part, unit in (("rerank", f"re-ranking K={cfgd['K']} (affinity included), queries/s"),
                     ("train", f"training K={cfgd['train_k']}, samples/s")):
    if not res[part]:
      continue
    lines += ["", unit, hdr]
    for r in res[part]:
      if "error" in r:
        lines.append(f"{part[:6]:6}{r['batch']:>6}  {r['impl']:<{w}}{r['error']}")
        continue
      sp = r.get("speedup_vs_torch_eager")
      mem, per = r.get("peak_mem_bytes"), r.get("mem_per_item_bytes")
      lines.append(
          f"{part[:6]:6}{r['batch']:>6}  {r['impl']:<{w}}{r['first_call_s']:>9.2f}"
          f"{r['steady_median_s']:>10.3f}{r['items_per_s']:>10.2f}"
          f"{(f'{sp:.2f}' if sp else '-'):>9}{r['achieved_flops'] / 1e9:>9.1f}"
          f"{100 * r['frac_of_matmul_peak']:>7.1f}"
          f"{(f'{mem / 2**20:.0f}' if mem is not None else '-'):>9}"
          f"{(f'{per / 2**20:.1f}' if per is not None else '-'):>10}"
          f"  {r.get('attention_ran', '-')}")
  lines += _warm_start_lines(res.get("warm_start"))
  lines += [""] + [f"note: {n}" for n in res["notes"]]
  return "\n".join(lines)


def _warm_start_lines(ws: dict | None) -> list[str]:
  """The warm-start section: each part's first call in a cold and in a warm process."""
  if not ws:
    return []
  lines = ["", "warm start (csa_jax, a second process with the compilation cache; "
           "first call = compile or load + one call)"]
  for part, w in ws.items():
    head = f"{part[:6]:6}{w['batch']:>6}  "
    if "error" in w:
      lines.append(head + w["error"])
      continue
    c, h = w["cold"], w["warm"]
    ratio = w.get("overhead_ratio")
    lines.append(
        head + f"first call cold {c['first_call_s']:.2f} s, warm {h['first_call_s']:.2f} s "
        f"({100 * w['warm_over_cold']:.0f}%); beyond a steady call "
        f"{c['first_call_s'] - c['second_call_s']:.2f} -> "
        f"{max(h['first_call_s'] - h['second_call_s'], 0):.2f} s "
        f"({f'{100 * ratio:.0f}%' if ratio is not None else '-'}); process "
        f"{c['process_s']:.1f} -> {h['process_s']:.1f} s")
  return lines


def main(argv: list[str]) -> int:
  # Before JAX touches a GPU: do not grab 75% of its memory, PyTorch runs in the same process.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  settings = parse_args(argv)
  # It reads no file; its outputs must only differ from each other (--out not a curves file).
  curves = [] if settings.curves is None else [
      os.path.join(settings.curves, n) for n in
      (curves_lib.JSON_NAME, *(f"{s}.png" for s in curves_lib.SWEEPS))]
  check_distinct([("--out", settings.out)] + [("--curves", p) for p in curves], [])
  res = benchmark.run_benchmark(settings, " ".join(["csa-jax", "bench", *argv]))
  print(format_table(res))
  print(f"csa-jax bench: results written to {settings.out}", file=sys.stderr)
  if "curves" in res:
    print(f"csa-jax bench: curves written to {res['curves']['dir']}: "
          f"{', '.join(res['curves']['files'])}", file=sys.stderr)
  return 0
