"""``csa-jax rerank``: CSA re-ranking of your own queries against your own database.

  csa-jax rerank --query Q --db DB --model M --K K [--T T] [--L L] [--heads H] [--batch-size B]
                 [--first-round IDS | --faiss FACTORY [--faiss-params P]]
                 [--query-names F] [--db-names F] --out ranks.npz

Q and DB hold descriptors in any format the readers accept (a dict at its 'query' / 'db' entry);
a float32 (n, C) .npy database is memory-mapped, never read whole. First-round top-T search
(T >= K, default K), then CSA re-ranks each query's top-K; no ground truth is needed. With
--first-round IDS the first round is the user's own: (Q, T) db ids from any engine, best first,
-1 only as padding at a row's end (docs/first_round.md has the rule); DB is then memory-mapped
without a full scan and only the rows IDS names are read and checked. With --faiss FACTORY it is
FAISS's (the faiss extra) over an index built from that factory string, DB read once as the
index is built (each row checked as it is read). ranks.npz holds 'ids'
(Q, T) int64, best first, 'scores' (Q, T) float32 (the CSA score for ranks 1..K, the
first-round score, the descriptors' dot product, after; -1 padding kept, its score NaN) and
'run' (JSON text: provenance and settings). With --query-names and/or --db-names (a text file,
one name per line, or a JSON list; a gnd file's qimlist / imlist), ranks.json and ranks.csv
(query, rank, db, score, score_from, first_round_rank; ranks from 1; padding left out) are
written beside it: score_from is 'csa' for the K ranks CSA re-ordered and 'first_round' after,
first_round_rank where the image stood before re-ranking ('first_round_rank' (Q, T) in the .npz).
All files are written at the end, atomically, all or none; the output paths are checked first,
and none of them may be an input (same path, a symlink or a hard link to it, or inside a workdir
given as --model). ranks.json holds the names exactly; in ranks.csv a name that starts with =, +,
-, @, a tab or a carriage return gets a leading single quote, so that a spreadsheet opening it
shows the name instead of running it as a formula (OWASP's advice against CSV injection).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys

import numpy as np

from csa_jax.cli.rerank_flags import add_rerank_flags, check_positive
from csa_jax.errors import fail
from csa_jax.fileio import atomic_paths, check_distinct, check_output_path
from csa_jax.retrieval import faiss_search, first_round, user_rerank
from csa_jax.retrieval.reorder import first_round_ranks
from csa_jax.retrieval.rerank import rerank_shortlist, search_and_rerank
from csa_jax.run_info import run_info

SCORES_DOC = ("ranks 1..K: CSA score (cosine of the refined query and candidate tokens); ranks "
              "K+1..T: first-round score (descriptor dot product)")
PAD_DOC = "; id -1 (the first round's padding): score NaN, left out of ranks.json and ranks.csv"


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="csa-jax rerank", description=__doc__.split("\n\n")[0])
  p.add_argument("--query", required=True, help="query descriptors (Q, C)")
  p.add_argument("--db", required=True, help="database descriptors (N, C); .npy is memory-mapped")
  p.add_argument("--model", required=True,
                 help="an original CSA .pth, a csa_jax .npz export or a training workdir")
  p.add_argument("--K", type=int, required=True, help="candidates re-ranked per query")
  p.add_argument("--T", type=int, default=None, help="ranking length, T >= K (default K)")
  add_rerank_flags(p)
  first = p.add_mutually_exclusive_group()
  first.add_argument("--first-round", default=None, metavar="IDS",
                     help="re-rank your own first round instead of searching: (Q, T) db ids, "
                     "best first, -1 only as padding at a row's end (.npy, .npz 'ids', JSON, "
                     ".txt/.csv); DB is memory-mapped and only the rows named are read")
  first.add_argument("--faiss", default=None, metavar="FACTORY",
                     help="first round by FAISS (pip install 'csa_jax[faiss]') over an index "
                     "built from this factory string: Flat, IVF4096,Flat, HNSW32,Flat, ...")
  p.add_argument("--faiss-params", default=None,
                 help="FAISS search parameters with --faiss, e.g. nprobe=64 or efSearch=128")
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


def _table(ids_QxT, scores_QxT, first_QxT, K, qnames, dbnames):
  """(query index, query, rank from 1, db, score, score_from, first-round rank) rows; a side
  without names is given by index; -1 padding (only ever at a row's end) is left out."""
  for i, (row, srow, frow) in enumerate(zip(ids_QxT, scores_QxT, first_QxT)):
    qn = qnames[i] if qnames else str(i)
    for r, (j, s, f) in enumerate(zip(row.tolist(), srow, frow.tolist())):
      if j == first_round.PAD:
        break
      yield (i, qn, r + 1, dbnames[j] if dbnames else str(j), float(str(s)),  # float32's shortest
             "csa" if r < K else "first_round", f)


def write_outputs(paths, ids, scores, first_ranks, K, run, qnames=None, dbnames=None,
                  scores_doc: str = SCORES_DOC) -> None:
  """The .npz (and JSON and CSV with names), all or none; ``first_ranks`` (Q, T) the 1-based
  first-round rank of each entry (``first_round_ranks``), ``scores_doc`` says what the scores
  are, in ranks.json."""
  with atomic_paths(paths) as tmps:
    with open(tmps[0], "wb") as f:
      np.savez(f, ids=ids, scores=scores, first_round_rank=first_ranks,
               run=np.array(json.dumps(run)))
    if len(tmps) == 1:
      return
    rows = list(_table(ids, scores, first_ranks, K, qnames, dbnames))
    doc = {"run": run, "scores": scores_doc, "queries": [
        {"query": qrows[0][1],
         "ranking": [{"rank": r, "db": d, "score": s, "score_from": by, "first_round_rank": f}
                     for _, _, r, d, s, by, f in qrows]}
        for qrows in (list(g) for _, g in itertools.groupby(rows, key=lambda row: row[0]))]}
    with open(tmps[1], "w", encoding="utf-8") as f:
      json.dump(doc, f, indent=1, ensure_ascii=False)
      f.write("\n")
    with open(tmps[2], "w", encoding="utf-8", newline="") as f:
      w = csv.writer(f)
      w.writerow(["query", "rank", "db", "score", "score_from", "first_round_rank"])
      w.writerows((csv_cell(qn), r, csv_cell(d), sc, by, fr)
                  for _, qn, r, d, sc, by, fr in rows)


def _check_first_round_flags(args) -> None:
  """The flags a given first round leaves without meaning are refused, not ignored."""
  if args.faiss_params is not None and args.faiss is None:
    raise fail("command line", "--faiss-params", "--faiss FACTORY with it", "no --faiss")
  if args.first_round is None and args.faiss is None:
    return
  if args.first_round is not None and args.T is not None:
    raise fail("command line", "--T", "no --T with --first-round (the ranking is the file's T "
               "columns)", str(args.T))
  flag = "--first-round" if args.first_round is not None else "--faiss"
  if args.faiss is not None:  # before any model or data is read
    faiss_search.require_faiss("--faiss")
  if args.block is not None:
    raise fail("command line", "--block", f"no --block with {flag} (it sizes the exact "
               "search)", str(args.block))
  if args.search_dtype != "float32":
    raise fail("command line", "--search-dtype", f"float32 with {flag} (it sets the exact "
               "search)", args.search_dtype)


def _rerank_given_first_round(args, q, db, model):
  """(ids_QxT, scores_QxT, first_QxT) for a first round from a file or FAISS: rerank_shortlist
  on it, then the dot products of ranks K+1..T, each from the db rows the ranking names."""
  K, L, n = args.K, model.cfg.anchors, len(db)
  if args.first_round is not None:
    ids = user_rerank.load_first_round(args.first_round, len(q), n, K, L)
    T = ids.shape[1]
  else:
    T = K if args.T is None else args.T
    for need, what in ((T, "T"), (L - 1, "L-1")):
      if need > n:
        raise fail(args.db, "db", f"at least {what} = {need} images", f"{n} images")
    ids = faiss_search.faiss_first_round(q, db, max(T, L - 1), args.faiss,
                                         params=args.faiss_params, source=args.db)
    ids = first_round.check_first_round(ids, n, K, L, f"--faiss {args.faiss}", "ids")
  new, csa_QxK = rerank_shortlist(q, db, ids, model, K, batch_size=args.batch_size,
                                  progress=True, source=args.db)
  first, ids = ids[:, :T].astype(np.int64), new[:, :T].astype(np.int64)
  scores = np.empty(ids.shape, np.float32)
  scores[:, :K] = csa_QxK
  scores[:, K:] = first_round.first_round_scores(q, db, ids, K)
  return ids, scores, first


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  check_positive(args, ("K", "T", "L", "heads", "batch_size", "block"))
  if args.T is not None and args.T < args.K:
    raise fail("command line", "--T", f"T >= K = {args.K} (the ranking holds the re-ranked "
               "top-K)", str(args.T))
  _check_first_round_flags(args)
  given = args.first_round is not None or args.faiss is not None
  if not args.out.endswith(".npz"):
    raise fail(args.out, "--out", "a path ending in .npz", os.path.basename(args.out))
  names = args.query_names is not None or args.db_names is not None
  paths = output_paths(args.out, names)
  for p in paths:
    check_output_path(p, "--out")  # before any model, data or compute
  check_distinct([("--out", p) for p in paths],
                 [(f"--{k.replace('_', '-')}", getattr(args, k))
                  for k in ("query", "db", "model", "query_names", "db_names",
                            "first_round")])

  from csa_jax.interop.export import load_model  # noqa: PLC0415  (the model stack, when run)
  model = load_model(args.model, args.heads)
  if args.L is not None and args.L != model.cfg.anchors:
    raise fail("command line", "--L", f"{model.cfg.anchors} (the model's anchors)", str(args.L))
  # A given first round needs only the rows it names, FAISS's index reads every row once as it
  # is built: neither needs a full scan of the database first.
  db = user_rerank.map_database(args.db) if given else user_rerank.load_database(args.db)
  q = user_rerank.load_queries(args.query, dim=db.shape[1])
  qnames = dbnames = None
  if args.query_names:
    qnames = user_rerank.load_names(args.query_names, len(q), "qimlist")
  if args.db_names:
    dbnames = user_rerank.load_names(args.db_names, len(db), "imlist")
  if given:
    ids, scores, first = _rerank_given_first_round(args, q, db, model)
  else:
    ids, scores, first = search_and_rerank(
        q, db, model, args.K, args.T, batch_size=args.batch_size, search_dtype=args.search_dtype,
        block=args.block, progress=True, source=args.db, return_first_round=True)
  T = ids.shape[1]
  settings = {"query": args.query, "db": args.db, "model": args.model, "K": args.K, "T": T,
              "L": model.cfg.anchors, "queries": len(q), "db_images": len(db),
              "first_round": args.first_round or ("faiss" if given else "exact search"),
              "faiss": args.faiss, "faiss_params": args.faiss_params,
              "search_dtype": args.search_dtype, "batch_size": args.batch_size,
              "query_names": args.query_names, "db_names": args.db_names,
              "model_config": model.cfg, "scores": SCORES_DOC + (PAD_DOC if given else "")}
  run = run_info(["csa-jax", "rerank", *argv], config=settings)
  try:
    write_outputs(paths, ids, scores, first_round_ranks(ids, first, args.K), args.K, run,
                  qnames, dbnames, settings["scores"])
  except OSError as e:
    raise fail(args.out, "--out", "a writable file",
               e.strerror or type(e).__name__) from None
  source = (f"first round {args.first_round}" if args.first_round is not None
            else f"FAISS {args.faiss}" if args.faiss is not None else "exact search")
  print(f"csa-jax rerank: {len(q)} queries, {len(db)} db images ({source}): top-{args.K} "
        f"re-ranked by CSA, {T} per query; wrote {', '.join(paths)}", file=sys.stderr)
  return 0
