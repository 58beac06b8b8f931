"""Converting the original pickle layout to .npz / .npy / .json, validated, all or nothing.

A file's kind is told by its content: a gnd file or the rSfM120k annotations become .json, a dict
of descriptor arrays .npz, a bare array (R1M) .npy. Descriptors are written as validated:
float32, (n, C), L2-normalised, so a converted R1M file is memory-mapped by every reader. A gnd
or annotations file given with a job cross-checks its counts; in a docs/method.md section 6 tree
(``tree_jobs``) features are checked against their annotations and gnd files.

``convert_all`` reads and validates everything, and checks every output path, before anything
is written; outputs are renamed into place only once all are complete, so a bad input or a
failed write leaves no output and no temporary file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
from typing import Callable

import numpy as np

from csa_jax.data import layout
from csa_jax.data.annotations import load_annotations
from csa_jax.data.descriptors import as_descriptors
from csa_jax.data.ground_truth import gnd_names, load_test_set, parse_gnd
from csa_jax.errors import fail
from csa_jax.fileio import atomic_path, check_output_path, save_npy, save_npz, write_json
from csa_jax.formats.containers import describe, load_container

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Job:
  """One pickle to convert.

  Attributes:
    src: the pickle.
    base: the output path without its suffix, which the content decides (.json, .npz, .npy).
    out: the output path itself when given (then ``base`` is unused).
    gnd: the test set's gnd file, to cross-check a test features file.
    annotations: rSfM120k annotations, to cross-check training features.
  """

  src: str
  base: str
  out: str | None = None
  gnd: str | None = None
  annotations: str | None = None

  def dst(self, suffix: str) -> str:
    """The output path once the content has chosen ``suffix`` ('.json', '.npz', '.npy')."""
    return self.out if self.out is not None else self.base + suffix


def strip_pickle_suffix(path: str) -> str:
  """``path`` without a trailing .pkl / .pickle (unchanged when it has neither)."""
  for ext in (".pkl", ".pickle"):
    if path.endswith(ext):
      return path[:-len(ext)]
  return path


def file_job(src: str, out: str | None = None, gnd: str | None = None,
             annotations: str | None = None) -> Job:
  """The job converting one pickle, beside it unless ``out`` names the output.

  Args:
    src: the pickle.
    out: the output path; by default ``src`` with the suffix its content calls for.
    gnd: the test set's gnd file, to cross-check a test features file.
    annotations: rSfM120k annotations, to cross-check training features.

  Returns:
    The ``Job``.
  """
  return Job(src, strip_pickle_suffix(src), out, gnd, annotations)


def tree_jobs(root: str, out_root: str | None = None) -> list[Job]:
  """A job for every pickle of a data root (the layout of ``data.layout``) under ``root``.

  Args:
    root: the tree (annotations/, train/, test/<dataset>/).
    out_root: where the converted tree goes (same relative paths); ``root`` when None.

  Returns:
    The jobs, annotations first; features carry their annotations / gnd file when it exists.
  """
  pickles = lambda base: [base + e for e in layout.PICKLE_EXTS if os.path.isfile(base + e)]
  anns = pickles(layout.annotations_base(root))
  found: list[tuple[str, dict]] = [(a, {}) for a in anns]
  datasets = sorted({os.path.basename(os.path.dirname(d)) for d in
                     glob.glob(os.path.join(glob.escape(root), "annotations", "*", "")) +
                     glob.glob(os.path.join(glob.escape(root), "test", "*", ""))})
  gnds = {ds: [g for b in layout.gnd_bases(root, ds) for g in pickles(b)] for ds in datasets}
  found += [(g, {}) for ds in datasets for g in gnds[ds]]
  for e in layout.PICKLE_EXTS:
    for f in sorted(glob.glob(os.path.join(glob.escape(root), "train", "*" + e))):
      found.append((f, {"annotations": anns[0]} if anns else {}))
  for ds in datasets:
    for e in layout.PICKLE_EXTS:
      for f in sorted(glob.glob(os.path.join(glob.escape(root), "test", glob.escape(ds),
                                             "*" + e))):
        if f not in gnds[ds]:  # a gnd file kept beside the features is a job of its own
          found.append((f, {"gnd": gnds[ds][0]} if gnds[ds] else {}))
  if not found:
    raise fail(root, "root", "a data tree with annotations/, train/ or test/ pickles",
               "no pickles")
  out_root = out_root or root
  return [Job(src, os.path.join(out_root, os.path.relpath(strip_pickle_suffix(src), root)), **kw)
          for src, kw in found]


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
             "a descriptor array", describe(obj))


def prepare(src: str, gnd: str | None = None,
            annotations: str | None = None) -> tuple[str, Callable[[str], None]]:
  """Reads and validates one pickle.

  Args:
    src: the pickle.
    gnd: the test set's gnd file, to cross-check a test features file.
    annotations: rSfM120k annotations, to cross-check training features.

  Returns:
    (suffix, write): the output's suffix and ``write(path)``, which writes the converted file.
  """
  obj = load_container(src)
  kind = _kind(obj, src)
  if kind == "gnd":
    entries = [{k: v.tolist() for k, v in g.items()} for g in parse_gnd(obj, src)]
    doc = {"gnd": entries, **gnd_names(obj, src)}
    return ".json", lambda p: write_json(p, doc)
  if kind == "annotations":
    doc = {split: {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                   for k, v in s.items() if v is not None}
           for split, s in load_annotations(src).items()}
    return ".json", lambda p: write_json(p, doc)
  if kind == "array":
    x = as_descriptors(obj, src, "descriptors")
    return ".npy", lambda p: save_npy(p, x)
  arrays = _descriptor_dict(obj, src, gnd, annotations)
  return ".npz", lambda p: save_npz(p, **arrays)


def _descriptor_dict(obj: dict, src: str, gnd: str | None, annotations: str | None) -> dict:
  if gnd is not None:  # a test set: counts and indices cross-checked with its gnd
    q, db, _ = load_test_set(src, gnd)
    rest = {k: v for k, v in obj.items() if k not in ("db", "query")}
    return {"db": db, "query": q, **_same_size(rest, src)}
  if annotations is not None:  # training sets: one descriptor per annotated image
    ann = load_annotations(annotations)
    return {k: as_descriptors(v, src, k, n=len(ann[k]["cluster"]) if k in ann else None)
            for k, v in obj.items()}
  return _same_size(obj, src)


def _same_size(obj: dict, src: str) -> dict:
  """Every entry as descriptors, all of the first one's size C."""
  out, dim = {}, None
  for k, v in obj.items():
    out[k] = as_descriptors(v, src, k, dim=dim)
    dim = out[k].shape[1]
  return out


def convert_all(jobs: list[Job], out_field: str = "--out") -> list[str]:
  """Converts every job or none: validates all, checks all output paths, then writes.

  A tree is read twice (validated, then converted again while writing) rather than held in
  memory whole: R1M alone is 8 GB.

  Args:
    jobs: what to convert (``file_job`` / ``tree_jobs``).
    out_field: the option that named the outputs, for messages ('--out', '--out-root').

  Returns:
    The paths written, one per job.
  """
  if not jobs:
    return []
  for job in jobs:  # explicit outputs fail before anything is read
    if job.out is not None:
      check_output_path(job.out, out_field)
  writers, dsts = [], []
  for job in jobs:
    suffix, write = prepare(job.src, job.gnd, job.annotations)
    log.info("%s: valid", job.src)
    dst = job.dst(suffix)
    check_output_path(dst, out_field)
    dsts.append(dst)
    writers.append(write if len(jobs) == 1 else None)
    del write  # in a tree, never two files' arrays in memory at once
  # Every output goes to its temporary file first and all are renamed only once every one is
  # complete: a failure while writing leaves no output and no temporary file.
  dst = dsts[0]
  try:
    with contextlib.ExitStack() as stack:
      for job, dst, write in zip(jobs, dsts, writers):
        tmp = stack.enter_context(atomic_path(dst))
        (write or prepare(job.src, job.gnd, job.annotations)[1])(tmp)
  except OSError as e:
    raise fail(dst, out_field, "a writable output file", e.strerror or type(e).__name__) \
        from None
  return dsts
