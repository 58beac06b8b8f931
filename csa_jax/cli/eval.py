"""``csa-jax eval``: revisited mAP of first-round search, and of CSA re-ranking with ``--model``.

  csa-jax eval --features F --gnd G [--r1m R1M.npy] [--model PATH [--K 1024] [--L L]]
               [--out results.json]

F holds the test set's 'db' and 'query' descriptors (or give them as two files, --db and --query:
the same cross-checks with G apply), G its ground truth (docs/method.md section 6 pickles, or
.npz/.npy/.json with the same content). R1M distractors are used only when given; a float32 (n, C)
.npy is memory-mapped, never read whole, and every row is checked. The output path is checked
before anything is loaded. The evaluation is exact over the whole database (every positive's rank
counts, as with a full sort), printed as the reference tools print it and written to JSON.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from csa_jax.data import readers as data_io
from csa_jax.errors import fail
from csa_jax.evaluation.evaluate import evaluate
from csa_jax.evaluation.revisited import format_results, results_to_json
from csa_jax.fileio import check_output_path, write_json
from csa_jax.retrieval.search import SCORE_DTYPES, StackedRows


def _dataset_name(gnd_path: str, r1m: bool) -> str:
  stem = os.path.splitext(os.path.basename(gnd_path))[0]
  m = re.fullmatch(r"gnd_(.+)", stem)
  return (m.group(1) if m else stem) + ("+1m" if r1m else "")


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="csa-jax eval", description=__doc__.split("\n\n")[0])
  p.add_argument("--features", default=None, help="test-set descriptors: 'db' and 'query'")
  p.add_argument("--db", default=None, help="instead of --features: db descriptors (.npy, ...)")
  p.add_argument("--query", default=None, help="instead of --features: query descriptors")
  p.add_argument("--gnd", required=True, help="ground truth (gnd_<ds>.pkl or .json)")
  p.add_argument("--r1m", default=None, help="R1M distractors (optional; .npy is memory-mapped)")
  p.add_argument("--model", default=None,
                 help="re-rank with CSA: an original .pth, a csa_jax .npz export or a workdir")
  p.add_argument("--heads", type=int, default=None, help="attention heads of a .pth (def. 12)")
  p.add_argument("--K", type=int, default=1024, help="candidates re-ranked per query")
  p.add_argument("--L", type=int, default=None, help="anchors (default: the model's)")
  p.add_argument("--batch-size", type=int, default=8, help="queries per re-ranking call")
  p.add_argument("--search-dtype", choices=SCORE_DTYPES, default="float32",
                 help="first-round scores: float32, or bfloat16 inputs (float32 accumulation)")
  p.add_argument("--block", type=int, default=None, help="db rows per search step")
  p.add_argument("--dataset", default=None, help="name in the table (default: from --gnd)")
  p.add_argument("--out", default=None, help="JSON results (default: eval_<dataset>.json)")
  args = p.parse_args(argv)
  for flag in ("K", "batch_size", "L", "block", "heads"):
    v = getattr(args, flag)
    if v is not None and v < 1:
      raise fail("command line", "--" + flag.replace("_", "-"), "an integer >= 1", str(v))

  if args.features is not None and (args.db is not None or args.query is not None) \
      or args.features is None and (args.db is None or args.query is None):
    raise fail("command line", "--features", "either --features F or both --db and --query",
               f"--features {args.features}, --db {args.db}, --query {args.query}")
  name = args.dataset or _dataset_name(args.gnd, bool(args.r1m))
  path = args.out or f"eval_{name}.json"
  check_output_path(path, "--out")  # before any model, data or compute
  model = None
  if args.model:  # first: a wrong model or --L fails before any data is read
    from csa_jax.interop.export import load_model
    model = load_model(args.model, args.heads)
    if args.L is not None and args.L != model[1].anchors:
      raise fail("command line", "--L", f"{model[1].anchors} (the model's anchors)", str(args.L))
  if args.features:
    q, db, gnd = data_io.load_test_set(args.features, args.gnd)
  else:  # the same cross-checks as one features file
    q, db, gnd = data_io.load_test_files(args.db, args.query, args.gnd)
  n_db = len(db)
  if args.r1m:
    db = StackedRows([db, data_io.load_r1m(args.r1m, dim=db.shape[1])])
  res = evaluate(q, db, gnd, model=model, K=args.K, L=args.L, batch_size=args.batch_size,
                 search_dtype=args.search_dtype, block=args.block, progress=True,
                 source=args.features or args.db)

  print(format_results(res["first_round"], name))
  out = {"dataset": name, "features": args.features or [args.db, args.query], "gnd": args.gnd,
         "r1m": args.r1m,
         "distractors": len(db) - n_db, **res["info"],
         "first_round": results_to_json(res["first_round"])}
  if model is not None:
    print(format_results(res["csa"], f"{name} CSA(K={res['info']['K']})"))
    out.update(model=args.model, csa=results_to_json(res["csa"]))
  try:
    write_json(path, out)  # atomic: a failure leaves neither the file nor a temporary
  except OSError as e:
    raise fail(path, "--out", "a writable file", e.strerror or type(e).__name__) from None
  print(f"csa-jax eval: {name}: {len(q)} queries, {len(db)} images ({out['distractors']} "
        f"distractors), {args.search_dtype} first-round scores; times {res['info']['seconds']} "
        f"s; results in {path}", file=sys.stderr)
  return 0
