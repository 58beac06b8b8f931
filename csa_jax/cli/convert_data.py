"""``csa-jax convert-data``: the original pickle layout -> .npz/.npy/.json, once.

  csa-jax convert-data FILE.pkl [--out PATH] [--gnd GND] [--annotations ANN]
  csa-jax convert-data --root ROOT [--out-root DIR]

A file's kind is told by its content: a gnd file or the rSfM120k annotations become .json, a dict
of descriptor arrays .npz, a bare array (R1M) .npy. Descriptors are written as validated:
float32, (n, C), L2-normalised, so a converted R1M file is memory-mapped by every reader.
``--gnd`` / ``--annotations`` cross-check counts. With ``--root`` every pickle of a docs/method.md section 6
tree is converted, features checked against their annotations. Everything is read and validated,
and every output path checked, before anything is written; outputs are renamed into place only
once all are complete: a bad input or a failed write leaves no output and no temporary file.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os

import numpy as np

from csa_jax.data import readers as data_io
from csa_jax.errors import fail
from csa_jax.fileio import (atomic_path, check_output_path, save_npy, save_npz,
                            write_json)


def _kind(obj, source: str) -> str:
  if isinstance(obj, np.ndarray):
    return "array"
  if isinstance(obj, dict):
    if "gnd" in obj:
      return "gnd"
    if isinstance(obj.get("train"), dict):
      return "annotations"
    if obj and all(isinstance(v, (np.ndarray, list)) for v in obj.values()):
      return "descriptors"
  raise fail(source, "file", "a gnd file, rSfM120k annotations, a dict of descriptor arrays or "
             "a descriptor array", data_io.describe(obj))


def _gnd_json(obj, gnd: list[dict], src: str) -> dict:
  entries = [{k: v.tolist() for k, v in g.items()} for g in gnd]
  return {"gnd": entries, **data_io.gnd_names(obj, src)}


def _annotations_json(ann: dict) -> dict:
  return {split: {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                  for k, v in s.items() if v is not None} for split, s in ann.items()}


def convert(src: str, gnd: str | None = None, annotations: str | None = None):
  """Reads and validates ``src``: (suffix, writer(path)) ready to write the converted file."""
  obj = data_io.load_container(src)
  kind = _kind(obj, src)
  if kind == "gnd":
    parsed = data_io.parse_gnd(obj, src)
    doc = _gnd_json(obj, parsed, src)
    return ".json", lambda p: write_json(p, doc)
  if kind == "annotations":
    doc = _annotations_json(data_io.load_annotations(src))
    return ".json", lambda p: write_json(p, doc)
  if kind == "array":
    x = data_io.as_descriptors(obj, src, "descriptors")
    return ".npy", lambda p: save_npy(p, x)
  arrays = _descriptor_dict(obj, src, gnd, annotations)
  return ".npz", lambda p: save_npz(p, **arrays)


def _descriptor_dict(obj: dict, src: str, gnd: str | None, annotations: str | None) -> dict:
  if gnd is not None:  # a test set: counts and indices cross-checked with its gnd
    q, db, _ = data_io.load_test_set(src, gnd)
    rest = {k: v for k, v in obj.items() if k not in ("db", "query")}
    return {"db": db, "query": q, **_plain(rest, src)}
  if annotations is not None:  # training sets: one descriptor per annotated image
    ann = data_io.load_annotations(annotations)
    out = {}
    for k, v in obj.items():
      n = len(ann[k]["cluster"]) if k in ann else None
      out[k] = data_io.as_descriptors(v, src, k, n=n)
    return out
  return _plain(obj, src)


def _plain(obj: dict, src: str) -> dict:
  out, dim = {}, None
  for k, v in obj.items():
    out[k] = data_io.as_descriptors(v, src, k, dim=dim)
    dim = out[k].shape[1]
  return out


def _tree_jobs(root: str) -> list[tuple[str, dict]]:
  """(pickle, cross-check args) for every pickle of a docs/method.md section 6 tree."""
  ann = os.path.join(root, "annotations", "retrieval-SfM-120k.pkl")
  jobs = []
  if os.path.exists(ann):
    jobs.append((ann, {}))
  for g in sorted(glob.glob(os.path.join(root, "annotations", "*", "gnd_*.pkl"))):
    jobs.append((g, {}))
  for f in sorted(glob.glob(os.path.join(root, "train", "*.pkl"))):
    jobs.append((f, {"annotations": ann} if os.path.exists(ann) else {}))
  for f in sorted(glob.glob(os.path.join(root, "test", "*", "*.pkl"))):
    ds = os.path.basename(os.path.dirname(f))
    g = os.path.join(root, "annotations", ds, f"gnd_{ds}.pkl")
    jobs.append((f, {"gnd": g} if os.path.exists(g) else {}))
  return jobs


def _strip(path: str) -> str:
  for ext in (".pkl", ".pickle"):
    if path.endswith(ext):
      return path[:-len(ext)]
  return path


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
    if args.out is not None:
      check_output_path(args.out, "--out")  # before reading anything
    jobs = [(args.src, {"gnd": args.gnd, "annotations": args.annotations})]
    bases = [None]
  else:
    if args.out is not None:
      raise fail("command line", "--out", "--out-root DIR (with --root, --out names one file)",
                 f"--out {args.out}")
    jobs = _tree_jobs(args.root)
    if not jobs:
      raise fail(args.root, "root", "a data tree with annotations/, train/ or test/ pickles",
                 "no pickles")
    out_root = args.out_root or args.root
    bases = [os.path.join(out_root, os.path.relpath(_strip(src), args.root)) for src, _ in jobs]

  # Validate everything first: one bad file means nothing is written. A tree is read twice
  # rather than held in memory whole (R1M alone is 8 GB).
  ready, dsts = [], []
  for (src, kw), base in zip(jobs, bases):
    suffix, write = convert(src, **kw)
    data_io.say(f"{src}: valid")
    dst = (args.out or _strip(src) + suffix) if base is None else base + suffix
    check_output_path(dst, "--out" if base is None else "--out-root")
    dsts.append(dst)
    ready.append(write if len(jobs) == 1 else None)
    del write  # in a tree, never two files' arrays in memory at once
  # Every output goes to its temporary file first and all are renamed only once every one is
  # complete: a failure while writing leaves no output and no temporary file.
  dst = dsts[0]
  try:
    with contextlib.ExitStack() as stack:
      for (src, kw), dst, write in zip(jobs, dsts, ready):
        tmp = stack.enter_context(atomic_path(dst))
        (write or convert(src, **kw)[1])(tmp)
  except OSError as e:
    raise fail(dst, "--out" if args.src else "--out-root", "a writable output file",
               e.strerror or type(e).__name__) from None
  for dst in dsts:
    print(f"wrote {dst}")
  return 0
