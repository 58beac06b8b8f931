"""``csa-jax eval``: revisited mAP of first-round search, and of CSA re-ranking with ``--model``.

  csa-jax eval --features F --gnd G [--r1m R1M.npy] [--model PATH [--K 1024] [--L L]]
               [--out results.json]
  csa-jax eval --data ROOT --features NAME [--datasets roxford5k,rparis6k] [--r1m]
               [--model ...] [--out results.json]
  csa-jax eval --tfds DATA_DIR --features NAME [--datasets roxford5k,rparis6k] [--r1m] [...]

F holds the test set's 'db' and 'query' descriptors (or give them as two files, --db and --query:
the same cross-checks with G apply), G its ground truth (docs/method.md section 6 pickles, or
.npz/.npy/.json with the same content). With --data, every dataset's files are found under ROOT in
the original layout (ROOT/test/<ds>/NAME.*, ROOT/annotations/<ds>/gnd_<ds>.*, and with a bare --r1m
ROOT/test/r1m/NAME.*), each evaluated in turn and all written to one JSON; without --datasets,
every test set under ROOT with NAME descriptors and a gnd file is evaluated. R1M distractors are
used only when asked for; a float32 (n, C) .npy is memory-mapped, never read whole, and every row
is checked. The output path is checked before anything is loaded; neither it nor the PNG beside it
may be a file the command reads (same path, symlink or hard link), or lie inside a TFDS copy or a
workdir given as --model. The evaluation is exact over the whole database (every positive's rank
counts, as with a full sort), printed with the reference tools' numbers (mAP and mP@1/5/10, two
decimals; one table per dataset, and per CSA run), written to JSON (with the run's provenance under
"run") and plotted per query (first round against CSA) to a PNG beside it.
With --tfds the same test sets (and, with a bare --r1m, the distractors) come from the TFDS copy
``csa-jax convert-data --to tfds`` wrote (the tfds extra; read without TensorFlow, checked as the
files are).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from csa_jax.cli.rerank_flags import add_rerank_flags, check_positive
from csa_jax.data import ground_truth, large_descriptors, layout
from csa_jax.errors import fail, one_line
from csa_jax.evaluation.evaluate import evaluate
from csa_jax.evaluation.revisited import format_results, results_to_json
from csa_jax.fileio import check_distinct, check_output_path, write_json
from csa_jax.retrieval.search import StackedRows
from csa_jax.run_info import run_info

_R1M_FROM_ROOT = ""  # --r1m given without a path: ROOT/test/r1m/<features>.* (with --data)


def _dataset_name(gnd_path: str, r1m: bool) -> str:
  stem = os.path.splitext(os.path.basename(gnd_path))[0]
  m = re.fullmatch(r"gnd_(.+)", stem)
  return (m.group(1) if m else stem) + ("+1m" if r1m else "")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="csa-jax eval", description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=None, help="a data root in the original layout (with "
                 "--features NAME [--datasets D1,D2])")
  p.add_argument("--tfds", default=None, help="instead of --data: a TFDS data_dir written by "
                 "convert-data --to tfds (with --features NAME [--datasets D1,D2])")
  p.add_argument("--datasets", default=None,
                 help="with --data or --tfds: comma-separated test sets (default: every test set "
                 "present with NAME descriptors)")
  p.add_argument("--features", default=None, help="test-set descriptors: 'db' and 'query' (with "
                 "--data: the descriptor set's name)")
  p.add_argument("--db", default=None, help="instead of --features: db descriptors (.npy, ...)")
  p.add_argument("--query", default=None, help="instead of --features: query descriptors")
  p.add_argument("--gnd", default=None, help="ground truth (gnd_<ds>.pkl or .json)")
  p.add_argument("--r1m", nargs="?", const=_R1M_FROM_ROOT, default=None,
                 help="R1M distractors (optional; .npy is memory-mapped); with --data, a bare "
                 "--r1m reads ROOT/test/r1m/NAME.*")
  p.add_argument("--model", default=None,
                 help="re-rank with CSA: an original .pth, a csa_jax .npz export or a workdir")
  p.add_argument("--K", type=int, default=1024, help="candidates re-ranked per query")
  add_rerank_flags(p)
  p.add_argument("--dataset", default=None, help="name in the table (default: from --gnd)")
  p.add_argument("--out", default=None, help="JSON results (default: eval_<dataset>.json); the "
                 "per-query AP plot goes beside it (.png)")
  return p


def _check_flags(args) -> None:
  """One way of naming the test sets: files, or a data root with names."""
  check_positive(args, ("K", "batch_size", "L", "block", "heads"))
  if args.data is not None and args.tfds is not None:
    raise fail("command line", "--tfds", "either --data ROOT or --tfds DATA_DIR",
               f"--data {args.data} --tfds {args.tfds}")
  if args.data is not None or args.tfds is not None:
    flag = "--data" if args.data is not None else "--tfds"
    mixed = [f"--{f}" for f in ("gnd", "db", "query", "dataset") if getattr(args, f) is not None]
    if mixed:
      raise fail("command line", flag, "--features NAME [--datasets D1,D2] (found under "
                 f"{flag[2:].upper()}), without --gnd, --db, --query or --dataset",
                 " ".join(mixed))
    if args.features is None:
      raise fail("command line", flag, "--features NAME (the descriptor set's name)",
                 "no --features")
    layout.check_name(args.features, "--features")
    if args.tfds is not None and args.r1m not in (None, _R1M_FROM_ROOT):
      raise fail("command line", "--r1m", "a bare --r1m with --tfds (its r1m split)",
                 f"--r1m {args.r1m}")
    return
  if args.datasets is not None:
    raise fail("command line", "--datasets", "--data ROOT or --tfds DATA_DIR to find the "
               "datasets in", "neither")
  if args.r1m == _R1M_FROM_ROOT:
    raise fail("command line", "--r1m", "a file path (a bare --r1m needs --data ROOT or --tfds)",
               "no path")
  if args.gnd is None:
    raise fail("command line", "--gnd", "the ground truth file (or --data ROOT)", "no --gnd")
  if args.features is not None and (args.db is not None or args.query is not None) \
      or args.features is None and (args.db is None or args.query is None):
    raise fail("command line", "--features", "either --features F or both --db and --query",
               f"--features {args.features}, --db {args.db}, --query {args.query}")


def _tfds_sets(data_dir: str, features: str, names: list[str] | None, r1m: bool):
  """The test sets (and the R1M split) of a TFDS copy, all checked present before any is read."""
  from csa_jax.data import tfds_reader  # noqa: PLC0415  (the optional tfds extra)
  where = tfds_reader.dataset_dir(data_dir, features)
  sources = tfds_reader.open_tfds(data_dir, features)
  if names is None:
    names = tfds_reader.split_test_sets(sources)
    if not names:
      raise fail(where, "--tfds", "at least one test set (<ds>_db and <ds>_query splits)",
                 f"splits {sorted(sources)}")
  for ds in names:
    layout.check_name(ds, "--datasets")
    if f"{ds}_db" not in sources or f"{ds}_query" not in sources:
      raise fail(where, "--datasets", f"test set '{ds}' in the TFDS copy",
                 f"test sets {tfds_reader.split_test_sets(sources)}")
  if r1m and "r1m" not in sources:
    raise fail(where, "--r1m", "an r1m split (convert-data --to tfds --r1m)",
               f"splits {sorted(sources)}")
  sets = [layout.TestSetFiles(ds, where, f"{where}: {ds}_query") for ds in names]
  return sets, (f"{where}: r1m" if r1m else None)


def _note_without_gnd(root: str, features: str) -> None:
  """Test sets with ``features`` descriptors but no gnd file: said, not silently left out."""
  for ds in layout.test_set_names(root, features, with_gnd=False):
    print(one_line(f"csa-jax eval: note: {root}: test/{ds} has {features} descriptors but no "
                   f"gnd_{ds}.* (annotations/{ds}/ or test/{ds}/): not evaluated"),
          file=sys.stderr)


def _one(args, name, q, db, n_db, gnd, model, source) -> tuple[dict, tuple]:
  """Evaluates and prints one test set (n_db images, then distractors); returns (its JSON
  entry, (first_round, csa))."""
  res = evaluate(q, db, gnd, model, K=args.K, batch_size=args.batch_size,
                 search_dtype=args.search_dtype, block=args.block, progress=True, source=source)
  print(format_results(res["first_round"], name))
  out = {"dataset": name, "distractors": len(db) - n_db, **res["info"],
         "first_round": results_to_json(res["first_round"])}
  if model is not None:
    print(format_results(res["csa"], f"{name} CSA(K={res['info']['K']})"))
    out.update(model=args.model, csa=results_to_json(res["csa"]))
  print(f"csa-jax eval: {name}: {len(q)} queries, {len(db)} images ({out['distractors']} "
        f"distractors), {args.search_dtype} first-round scores; "
        + ", ".join(f"{k} {v:.2f} s" for k, v in res["info"]["seconds"].items()), file=sys.stderr)
  return out, (res["first_round"], res["csa"])


def _settings(args) -> dict:
  return {k: getattr(args, k) for k in ("data", "tfds", "datasets", "features", "db", "query",
                                        "gnd",
                                        "r1m", "model", "heads", "K", "L", "batch_size",
                                        "search_dtype", "block")}


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  _check_flags(args)
  by_name = args.data is not None or args.tfds is not None
  if by_name:
    names = None  # every test set present
    if args.datasets is not None:
      names = [d.strip() for d in args.datasets.split(",") if d.strip()]
      if not names or len(set(names)) != len(names):
        raise fail("command line", "--datasets", "distinct comma-separated dataset names",
                   repr(args.datasets))
    if args.tfds is not None:
      sets, r1m = _tfds_sets(args.tfds, args.features, names, args.r1m is not None)
    else:
      sets = layout.test_set_files(args.data, args.features, names)  # None: every one present
      if names is None:
        _note_without_gnd(args.data, args.features)
      r1m = args.r1m or (layout.r1m_file(args.data, args.features)
                         if args.r1m is not None else None)
    default_out = f"eval_{args.features}{'+1m' if r1m else ''}.json"
    if args.datasets is None:
      print(f"csa-jax eval: test sets found: {', '.join(s.name for s in sets)}", file=sys.stderr)
  else:
    r1m = args.r1m
    sets = [layout.TestSetFiles(args.dataset or _dataset_name(args.gnd, bool(r1m)),
                                   args.features or args.db, args.gnd)]
    default_out = f"eval_{sets[0].name}.json"
  path = check_output_path(args.out or default_out, "--out")  # before model, data, compute
  png = os.path.splitext(path)[0] + ".png"
  inputs = [(f"--{k}", getattr(args, k)) for k in ("db", "query", "gnd", "model")] + [
      ("--r1m", r1m)]
  if by_name:  # --features is a name; the sets hold the files (a TFDS copy's directory)
    flag = "--tfds" if args.tfds is not None else "--data"
    inputs += [(flag, f) for s in sets for f in (s.features, s.gnd)]
  else:
    inputs.append(("--features", args.features))
  check_distinct([("--out", path), ("--out", png)], inputs)
  model = None
  if args.model:  # first: a wrong model or --L fails before any data is read
    from csa_jax.interop.export import load_model  # noqa: PLC0415
    model = load_model(args.model, args.heads)
    if args.L is not None and args.L != model.cfg.anchors:
      raise fail("command line", "--L", f"{model.cfg.anchors} (the model's anchors)",
                 str(args.L))

  entries, plotted, distractors = {}, {}, None
  for s in sets:
    if args.tfds is not None:  # checked as the files are
      from csa_jax.data import tfds_reader  # noqa: PLC0415  (the optional tfds extra)
      q, db, gnd = tfds_reader.load_test_set_from_tfds(args.tfds, args.features, s.name)
    elif args.data is None and args.db is not None:  # the same cross-checks as one features file
      q, db, gnd = ground_truth.load_test_files(args.db, args.query, args.gnd)
    else:
      q, db, gnd = ground_truth.load_test_set(s.features, s.gnd)
    name, n_db = s.name + ("+1m" if r1m and by_name else ""), len(db)
    if r1m:  # read once, shared by every dataset (all must have its C)
      if distractors is None and args.tfds is not None:
        distractors = tfds_reader.load_r1m_from_tfds(args.tfds, args.features, dim=db.shape[1])
      elif distractors is None:
        # checked as the search reads it
        distractors = large_descriptors.load_r1m(r1m, dim=db.shape[1], defer=True)
      elif distractors.shape[1] != db.shape[1]:
        raise fail(s.features, "db", f"descriptor size C={distractors.shape[1]} (as the R1M "
                   "distractors)", f"C={db.shape[1]}")
      db = StackedRows([db, distractors])
    entries[name], plotted[name] = _one(args, name, q, db, n_db, gnd, model, s.features)
    entries[name].update(features=s.features if by_name or args.db is None
                         else [args.db, args.query], gnd=s.gnd, r1m=r1m)

  run = run_info(["csa-jax", "eval", *argv], config=_settings(args))
  if not by_name:
    out = {**entries[sets[0].name], "run": run}
  else:
    out = {"data": args.data or args.tfds, "format": "tfds" if args.tfds else "files",
           "features": args.features, "r1m": r1m, "model": args.model,
           "datasets": entries, "run": run}
  try:
    write_json(path, out)  # atomic: a failure leaves neither the file nor a temporary
  except OSError as e:
    raise fail(path, "--out", "a writable file", e.strerror or type(e).__name__) from None
  try:
    from csa_jax.evaluation.plots import save_ap_plot  # noqa: PLC0415  (matplotlib: optional)
    save_ap_plot(png, plotted)
  except Exception as e:  # pylint: disable=broad-except  (a plot is a by-product, never fatal)
    png = None
    print(f"csa-jax: warning: no per-query AP plot ({type(e).__name__}: {one_line(str(e))})",
          file=sys.stderr)
  print(f"csa-jax eval: results in {path}" + (f", per-query AP plot in {png}" if png else ""),
        file=sys.stderr)
  return 0
