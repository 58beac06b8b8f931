"""``csa-jax convert-data``: the original pickle layout -> .npz/.npy/.json, once.

  csa-jax convert-data FILE.pkl [--out PATH] [--gnd GND] [--annotations ANN]
  csa-jax convert-data --root ROOT [--out-root DIR]

A file's kind is told by its content: a gnd file or the rSfM120k annotations become .json, a dict
of descriptor arrays .npz, a bare array (R1M) .npy, written as validated (``csa_jax.data.convert``).
``--gnd`` / ``--annotations`` cross-check counts. With ``--root`` every pickle of a docs/method.md
section 6 tree is converted, features checked against their annotations. Everything is validated
before anything is written: a bad input or a failed write leaves no output and no temporary file.
"""

from __future__ import annotations

import argparse

from csa_jax.data import convert
from csa_jax.errors import fail


def main(argv: list[str]) -> int:
  ap = argparse.ArgumentParser(prog="csa-jax convert-data", description=__doc__.split("\n")[0])
  ap.add_argument("src", nargs="?", help="one pickle to convert")
  ap.add_argument("--out", help="output path (default: SRC with .json/.npz/.npy)")
  ap.add_argument("--gnd", help="the test set's gnd file, to cross-check a test features file")
  ap.add_argument("--annotations", help="rSfM120k annotations, to cross-check training features")
  ap.add_argument("--root", help="convert every pickle of a docs/method.md section 6 data tree")
  ap.add_argument("--out-root", help="with --root: write the converted tree here (default: ROOT)")
  args = ap.parse_args(argv)
  if (args.src is None) == (args.root is None):
    ap.error("give either one SRC file or --root DIR")

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
  for dst in convert.convert_all(jobs, out_field):
    print(f"wrote {dst}")
  return 0
