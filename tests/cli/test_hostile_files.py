"""Special and huge files given to ``csa-jax rerank`` and ``csa-jax eval``, as subprocesses.

A FIFO used to hang ``open()`` / ``zipfile.is_zipfile()`` forever, a symlink to ``/dev/zero``
was read until memory ran out, a sparse 100 GB names or gnd file was read whole before any
check, and an all-zero memory-mapped database was read whole into RAM before being refused.
Each case now must end at once (the FIFO cases get a timeout far below a hang) with exit 2, one
``error:`` line naming the file, no traceback, and the case's directory unchanged. The other
checks of the same readers run in process in ``tests/data/test_regular_file.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hostile_cli import (MEM_LIMIT_MB, CliResult, _TRAMPOLINE, assert_tree_unchanged,
                         expect_input_error, run_cli, tree_snapshot)

from toy_retrieval import spread_params

from csa_jax.core.config import ModelConfig
from csa_jax.interop.export import save_export

C, NQ, NDB = 16, 3, 40
CFG = ModelConfig(anchors=8, dim=16, depth=1, heads=2)
FAST_S = 90  # JAX boots in seconds even on 2 busy cores; a blocked open() never returns
HUGE = 100 << 30  # sparse: claimed by the file size, nothing on disk


def _unit(n, c=C, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, c)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """Valid inputs: q.npy, db.npy, model.npz, gnd_toy.json."""
  d = tmp_path_factory.mktemp("inputs")
  np.save(d / "q.npy", _unit(NQ, seed=1))
  np.save(d / "db.npy", _unit(NDB))
  save_export(d / "model.npz", spread_params(CFG, np.random.default_rng(1)), CFG)
  gnd = [{"easy": [q], "hard": [10 + q], "junk": [20 + q]} for q in range(NQ)]
  (d / "gnd_toy.json").write_text(json.dumps({"imlist": [f"im{i}" for i in range(NDB)],
                                              "gnd": gnd}))
  return d


def _rerank(base, d, **over):
  args = {"--query": base / "q.npy", "--db": base / "db.npy", "--model": base / "model.npz",
          "--K": 4, "--out": d / "out" / "ranks.npz", **over}
  return ["rerank"] + [str(x) for kv in args.items() for x in kv]


def _eval(base, d, **over):
  args = {"--db": base / "db.npy", "--query": base / "q.npy", "--gnd": base / "gnd_toy.json",
          "--out": d / "res.json", **over}
  return ["eval"] + [str(x) for kv in args.items() for x in kv]


def _sparse(path, head: bytes = b"", size: int = HUGE):
  """A huge file in a ``huge/`` folder beside ``path``: hashing it for a snapshot would take
  minutes, so ``_stats`` checks it instead."""
  path = path.parent.parent / "huge" / path.name
  path.parent.mkdir(exist_ok=True)
  with open(path, "wb") as f:
    f.write(head)
    f.truncate(size)
  return path


def _fifo(path):
  os.mkfifo(path)
  return path


def _zero(path):
  os.symlink("/dev/zero", path)
  return path


CASES = {
    "fifo_query": (lambda b, d: _rerank(b, d, **{"--query": _fifo(d / "q.npy")}),
                   ["q.npy: file: expected a regular file, found a FIFO"]),
    "fifo_model": (lambda b, d: _rerank(b, d, **{"--model": _fifo(d / "m.pth")}),
                   ["m.pth: file: expected a regular file, found a FIFO"]),
    "fifo_gnd": (lambda b, d: _eval(b, d, **{"--gnd": _fifo(d / "gnd.json")}),
                 ["gnd.json: file: expected a regular file, found a FIFO"]),
    "dev_zero_query_names": (
        lambda b, d: _rerank(b, d, **{"--query-names": _zero(d / "names.txt")}),
        ["names.txt: file: expected a regular file, found a character device"]),
    "dev_zero_model": (lambda b, d: _rerank(b, d, **{"--model": _zero(d / "m.pth")}),
                       ["m.pth: file: expected a regular file, found a character device"]),
    "huge_db_names": (lambda b, d: _rerank(b, d, **{"--db-names": _sparse(d / "n.txt")}),
                      ["n.txt: file: expected a file of at most 1 GiB", "found 100 GiB"]),
    "huge_gnd_json": (lambda b, d: _eval(b, d, **{"--gnd": _sparse(d / "g.json", b'{"gnd": [')}),
                      ["g.json: file: expected a file of at most 1 GiB", "found 100 GiB"]),
    "lone_surrogate_name": (
        lambda b, d: _rerank(b, d, **{"--query-names": _json(d / "qn.json",
                                                             '["a", "\\ud800", "c"]')}),
        ["qn.json: qimlist[1]: expected a name in valid Unicode", "lone surrogate U+D800"]),
}


def _json(path, text: str):
  path.write_text(text)
  return path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_special_and_huge_files_fail_at_once(base, tmp_path, name):
  make, needles = CASES[name]
  d = tmp_path / "case"
  d.mkdir()
  args = make(base, d)
  before = tree_snapshot(d), tree_snapshot(base), _stats(tmp_path / "huge")
  res = run_cli(args, d, timeout=FAST_S)
  expect_input_error(res, *needles)
  assert res.stdout == ""
  assert_tree_unchanged(before[0], d)
  assert_tree_unchanged(before[1], base)
  assert _stats(tmp_path / "huge") == before[2]


def _stats(folder) -> dict:
  """name -> (size, mtime) of the huge files: unchanged, and nothing added."""
  if not folder.exists():
    return {}
  return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


# Runs the trampoline of ``run_cli`` as its only child and writes that child's peak RSS (KiB):
# RUSAGE_CHILDREN of the test process would also hold every earlier case's peak.
_PEAK = ("import resource, subprocess, sys; "
         "p = subprocess.run(sys.argv[2:], stdin=subprocess.DEVNULL); "
         "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN)"
         ".ru_maxrss)); sys.exit(p.returncode if p.returncode >= 0 else 128 - p.returncode)")


@pytest.mark.slow
def test_all_zero_memmap_db_refused_without_reading_it(base, tmp_path):
  n, c = 1 << 24, 64  # float32: 4 GiB of zeros, sparse on disk
  (tmp_path / "huge").mkdir()
  path = tmp_path / "huge" / "db.npy"
  db = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, c))
  size = os.path.getsize(path)
  del db
  assert size > 4 << 30
  d = tmp_path / "case"
  d.mkdir()
  args = _rerank(base, d, **{"--db": path})
  before = tree_snapshot(d), _stats(tmp_path / "huge")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  mem_mb = MEM_LIMIT_MB + (size >> 20)  # the memory map takes address space, not memory
  p = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path / "peak"), sys.executable, "-c",
                      _TRAMPOLINE, str(mem_mb), "0", "0", "-m", "csa_jax.cli.main", *args],
                     cwd=d,
                     env=env, capture_output=True, text=True, timeout=120)
  expect_input_error(CliResult(args, p.returncode, p.stdout, p.stderr),
                     "db.npy: db: expected non-zero descriptors, found an all-zero row 0")
  peak = int((tmp_path / "peak").read_text()) << 10
  assert_tree_unchanged(before[0], d)
  assert _stats(tmp_path / "huge") == before[1]
  assert peak < min(1 << 30, size // 4), f"peak RSS {peak >> 20} MiB for a {size >> 20} MiB file"
