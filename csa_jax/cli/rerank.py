"""``csa-jax rerank``: CSA re-ranking of your own queries against your own database.

  csa-jax rerank --query Q --db DB --model M --K K [--T T] [--L L] [--heads H] [--batch-size B]
                 [--query-names F] [--db-names F] --out ranks.npz

Q and DB hold descriptors in any format the readers accept (a dict at its 'query' / 'db' entry);
a float32 (n, C) .npy database is memory-mapped, never read whole. First-round top-T search
(T >= K, default K), then CSA re-ranks each query's top-K; no ground truth is needed. ranks.npz
holds 'ids' (Q, T) int64, best first, 'scores' (Q, T) float32 (the CSA score for ranks 1..K,
the first-round score after) and 'run' (JSON text: provenance and settings). With --query-names
and/or --db-names (a text file, one name per line, or a JSON list; a gnd file's qimlist /
imlist), ranks.json and ranks.csv (query, rank, db, score; ranks from 1) are written beside it.
All files are written at the end, atomically, all or none; the output paths are checked first,
and none of them may be an input (same path, a symlink or a hard link to it, or inside a workdir
given as --model). ranks.json holds the names exactly; in ranks.csv a name that starts with =, +,
-, @, a tab or a carriage return gets a leading single quote, so that a spreadsheet opening it
shows the name instead of running it as a formula (OWASP's advice against CSV injection).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

from csa_jax.cli.rerank_flags import add_rerank_flags, check_positive
from csa_jax.errors import fail
from csa_jax.fileio import atomic_paths, check_distinct, check_output_path
from csa_jax.retrieval import user_rerank
from csa_jax.retrieval.rerank import search_and_rerank
from csa_jax.run_info import run_info

SCORES_DOC = ("ranks 1..K: CSA score (cosine of the refined query and candidate tokens); ranks "
              "K+1..T: first-round score (descriptor dot product)")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="csa-jax rerank", description=__doc__.split("\n\n")[0])
  p.add_argument("--query", required=True, help="query descriptors (Q, C)")
  p.add_argument("--db", required=True, help="database descriptors (N, C); .npy is memory-mapped")
  p.add_argument("--model", required=True,
                 help="an original CSA .pth, a csa_jax .npz export or a training workdir")
  p.add_argument("--K", type=int, required=True, help="candidates re-ranked per query")
  p.add_argument("--T", type=int, default=None, help="ranking length, T >= K (default K)")
  add_rerank_flags(p)
  p.add_argument("--query-names", default=None, help="query names: text (one a line) or JSON")
  p.add_argument("--db-names", default=None, help="database names: text (one a line) or JSON")
  p.add_argument("--out", required=True, help="the ranking, a .npz (JSON/CSV beside it)")
  return p


def output_paths(out: str, names: bool) -> list[str]:
  """ranks.npz, and with names ranks.json and ranks.csv beside it."""
  stem = os.path.splitext(out)[0]
  return [out] + ([stem + ".json", stem + ".csv"] if names else [])


# A cell starting with one of these is a formula to a spreadsheet (OWASP, CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(name: str) -> str:
  """``name`` as a CSV cell no spreadsheet runs: a leading formula character gets a quote."""
  return "'" + name if name.startswith(_FORMULA_START) else name


def _table(ids_QxT, scores_QxT, qnames, dbnames):
  """(query, rank from 1, db, score) rows; a side without names is given by index."""
  for i, (row, srow) in enumerate(zip(ids_QxT, scores_QxT)):
    qn = qnames[i] if qnames else str(i)
    for r, (j, s) in enumerate(zip(row.tolist(), srow)):
      yield qn, r + 1, dbnames[j] if dbnames else str(j), float(str(s))  # float32's shortest


def write_outputs(paths, ids, scores, run, qnames=None, dbnames=None) -> None:
  """The .npz (and JSON and CSV with names), all or none."""
  with atomic_paths(paths) as tmps:
    with open(tmps[0], "wb") as f:
      np.savez(f, ids=ids, scores=scores, run=np.array(json.dumps(run)))
    if len(tmps) == 1:
      return
    rows = list(_table(ids, scores, qnames, dbnames))
    t = ids.shape[1]
    doc = {"run": run, "scores": SCORES_DOC, "queries": [
        {"query": rows[i * t][0],
         "ranking": [{"rank": r, "db": d, "score": s} for _, r, d, s in rows[i * t:(i + 1) * t]]}
        for i in range(len(ids))]}
    with open(tmps[1], "w", encoding="utf-8") as f:
      json.dump(doc, f, indent=1, ensure_ascii=False)
      f.write("\n")
    with open(tmps[2], "w", encoding="utf-8", newline="") as f:
      w = csv.writer(f)
      w.writerow(["query", "rank", "db", "score"])
      w.writerows((csv_cell(qn), r, csv_cell(d), sc) for qn, r, d, sc in rows)


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  check_positive(args, ("K", "T", "L", "heads", "batch_size", "block"))
  if args.T is not None and args.T < args.K:
    raise fail("command line", "--T", f"T >= K = {args.K} (the ranking holds the re-ranked "
               "top-K)", str(args.T))
  if not args.out.endswith(".npz"):
    raise fail(args.out, "--out", "a path ending in .npz", os.path.basename(args.out))
  names = args.query_names is not None or args.db_names is not None
  paths = output_paths(args.out, names)
  for p in paths:
    check_output_path(p, "--out")  # before any model, data or compute
  check_distinct([("--out", p) for p in paths],
                 [(f"--{k.replace('_', '-')}", getattr(args, k))
                  for k in ("query", "db", "model", "query_names", "db_names")])

  from csa_jax.interop.export import load_model  # noqa: PLC0415  (the model stack, when run)
  model = load_model(args.model, args.heads)
  if args.L is not None and args.L != model.cfg.anchors:
    raise fail("command line", "--L", f"{model.cfg.anchors} (the model's anchors)", str(args.L))
  db = user_rerank.load_database(args.db)
  q = user_rerank.load_queries(args.query, dim=db.shape[1])
  qnames = dbnames = None
  if args.query_names:
    qnames = user_rerank.load_names(args.query_names, len(q), "qimlist")
  if args.db_names:
    dbnames = user_rerank.load_names(args.db_names, len(db), "imlist")
  T = args.K if args.T is None else args.T
  ids, scores = search_and_rerank(q, db, model, args.K, T, batch_size=args.batch_size,
                                  search_dtype=args.search_dtype, block=args.block,
                                  progress=True, source=args.db)
  settings = {"query": args.query, "db": args.db, "model": args.model, "K": args.K, "T": T,
              "L": model.cfg.anchors, "queries": len(q), "db_images": len(db),
              "search_dtype": args.search_dtype, "batch_size": args.batch_size,
              "query_names": args.query_names, "db_names": args.db_names,
              "model_config": model.cfg, "scores": SCORES_DOC}
  run = run_info(["csa-jax", "rerank", *argv], config=settings)
  try:
    write_outputs(paths, ids, scores, run, qnames, dbnames)
  except OSError as e:
    raise fail(args.out, "--out", "a writable file",
               e.strerror or type(e).__name__) from None
  print(f"csa-jax rerank: {len(q)} queries, {len(db)} db images: top-{args.K} re-ranked by CSA, "
        f"{T} per query; wrote {', '.join(paths)}", file=sys.stderr)
  return 0
