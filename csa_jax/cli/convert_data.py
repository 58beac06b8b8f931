"""``csa-jax convert-data``: the original pickle layout -> .npz/.npy/.json, once.

  csa-jax convert-data FILE.pkl [--out PATH] [--gnd GND] [--annotations ANN]
  csa-jax convert-data --root ROOT [--out-root DIR]
  csa-jax convert-data --root ROOT --to tfds --out-root DATA_DIR [--feature NAME ...]
                       [--datasets roxford5k,rparis6k] [--r1m]

A file's kind is told by its content: a gnd file or the rSfM120k annotations become .json, a dict
of descriptor arrays .npz, a bare array (R1M) .npy, written as validated (``csa_jax.data.convert``).
``--gnd`` / ``--annotations`` cross-check counts. With ``--root`` every pickle of a docs/method.md
section 6 tree is converted, features checked against their annotations. Everything is validated
before anything is written: a bad input or a failed write leaves no output and no temporary file.
No output may be an input (a SRC pickle, --gnd, --annotations: same path, symlink or hard link),
whatever suffix the content then picks; --out-root may be ROOT (the default) or any directory,
since only files of the input tree could be overwritten and those are checked one by one.

With ``--to tfds`` (the optional extra: pip install 'csa_jax[tfds]') each descriptor set of the
tree becomes a versioned TFDS dataset in ArrayRecord format, DATA_DIR/csa_data/<feature>/1.0.0,
read back without TensorFlow (``csa_jax.data.tfds_builder`` / ``tfds_reader``); each dataset is
written whole or not at all.
"""

from __future__ import annotations

import argparse
import os

from csa_jax.data import convert, layout
from csa_jax.errors import fail
from csa_jax.fileio import check_distinct

_SUFFIXES = (".json", ".npz", ".npy")  # the outputs the content may pick (convert.prepare)


def main(argv: list[str]) -> int:
  ap = argparse.ArgumentParser(prog="csa-jax convert-data", description=__doc__.split("\n")[0])
  ap.add_argument("src", nargs="?", help="one pickle to convert")
  ap.add_argument("--out", help="output path (default: SRC with .json/.npz/.npy)")
  ap.add_argument("--gnd", help="the test set's gnd file, to cross-check a test features file")
  ap.add_argument("--annotations", help="rSfM120k annotations, to cross-check training features")
  ap.add_argument("--root", help="convert every pickle of a docs/method.md section 6 data tree")
  ap.add_argument("--out-root", help="with --root: write the converted tree here (default: ROOT)")
  ap.add_argument("--to", choices=("files", "tfds"), default="files",
                  help="files: .npz/.npy/.json (default); tfds: TFDS ArrayRecord datasets under "
                  "--out-root, one per descriptor set (the tfds extra)")
  ap.add_argument("--feature", action="append", default=None,
                  help="with --to tfds: a descriptor set to pack (repeatable; default: every "
                  "train/<feature>.*)")
  ap.add_argument("--datasets", default=None,
                  help="with --to tfds: comma-separated test sets (default: every test/<ds>/ "
                  "holding the feature, with its gnd file)")
  ap.add_argument("--r1m", action="store_true",
                  help="with --to tfds: also pack test/r1m/<feature>.* (1M examples: slow)")
  args = ap.parse_args(argv)
  if (args.src is None) == (args.root is None):
    ap.error("give either one SRC file or --root DIR")
  if args.to == "tfds":
    return _to_tfds(args)
  for flag in ("feature", "datasets", "r1m"):
    if getattr(args, flag):
      raise fail("command line", f"--{flag}", "--to tfds (it only applies there)",
                 f"--{flag} with --to {args.to}")

  if args.src is not None:
    if args.out_root is not None:
      raise fail("command line", "--out-root", "--root DIR (with one SRC, use --out)",
                 f"--out-root {args.out_root}")
    jobs = [convert.file_job(args.src, args.out, args.gnd, args.annotations)]
    out_field = "--out"
  else:
    if args.out is not None:
      raise fail("command line", "--out", "--out-root DIR (with --root, --out names one file)",
                 f"--out {args.out}")
    jobs = convert.tree_jobs(args.root, args.out_root)
    out_field = "--out-root"
  _check_not_inputs(jobs, out_field, "SRC" if args.src is not None else "--root")
  for dst in convert.convert_all(jobs, out_field):
    print(f"wrote {dst}")
  return 0


def _check_not_inputs(jobs, out_field: str, src_field: str) -> None:
  """Refuses, before anything is read, an output that could land on a file being converted.

  Every suffix a job's content could pick is checked, as the content is not known yet.

  Args:
    jobs: the conversions (``convert.file_job`` / ``convert.tree_jobs``).
    out_field: the flag that named the outputs ('--out', '--out-root').
    src_field: the one that named the pickles ('SRC', '--root').
  """
  outputs = []
  for job in jobs:
    outs = [job.out] if job.out is not None else [job.base + sfx for sfx in _SUFFIXES]
    outputs += [(out_field, p) for p in outs]
  inputs = [(flag, p) for job in jobs for flag, p in
            ((src_field, job.src), ("--gnd", job.gnd), ("--annotations", job.annotations))]
  check_distinct(outputs, inputs)


def _to_tfds(args) -> int:
  """``--to tfds``: one TFDS dataset per descriptor set of the tree under --root."""
  from csa_jax.data import tfds_builder  # noqa: PLC0415  (the optional tfds extra)
  if args.root is None:
    raise fail("command line", "--to tfds", "--root ROOT (a whole data tree)",
               f"one SRC file {args.src}")
  for flag in ("out", "gnd", "annotations"):
    if getattr(args, flag) is not None:
      raise fail("command line", f"--{flag}", "nothing with --to tfds (it packs a whole tree)",
                 f"--{flag} {getattr(args, flag)}")
  if args.out_root is None:
    raise fail("command line", "--out-root", "the TFDS data_dir to write (with --to tfds)",
               "none")
  features = args.feature or layout.feature_names(args.root)
  if not features:
    raise fail(args.root, "train", "descriptor files train/<feature>.pkl or .npz", "none")
  datasets = None if args.datasets is None else [d for d in args.datasets.split(",") if d]
  for f in features:  # every name and destination checked before anything is read
    tfds_builder.check_feature(f, "command line", "--feature")
    dst = tfds_builder.dataset_dir(args.out_root, f)
    if os.path.exists(dst):
      raise fail(dst, "--out-root", "a new dataset directory (remove it to rebuild)", "it exists")
  tfds_builder.import_tfds()
  for f in features:
    print(f"wrote {tfds_builder.build_tfds(args.root, f, args.out_root, datasets, args.r1m)}")
  return 0
