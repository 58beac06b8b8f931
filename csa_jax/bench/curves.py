"""Cost curves of ``csa-jax bench --curves DIR``: how time and memory grow with K and the batch.

Three sweeps, each point its own race (``race.race``: first call apart, interleaved rounds,
median) of csa_jax (every attention variant of the run) against PyTorch eager: re-rank time per
query against K at a fixed batch; re-rank throughput against the batch at the run's K; training
throughput against the batch at the run's training K. Every point is a row as in the table
(``rows.result_rows``: FLOP/s by ``flops``, memory by the run's probe). DIR gets curves.json and
one PNG per sweep (``curve_plots``), all four or none.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from csa_jax.bench import arena as arena_lib
from csa_jax.bench import curve_plots, flops, race, rows
from csa_jax.fileio import atomic_paths

SCHEMA = "csa_jax.bench.curves/1"
JSON_NAME = "curves.json"
SWEEPS = ("rerank_vs_k", "rerank_vs_batch", "train_vs_batch")
# Per implementation and point, what the plots draw (rows.result_rows' fields).
SERIES_FIELDS = ("s_per_item", "items_per_s", "achieved_flops", "mem_per_item_bytes")

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CurveSizes:
  """The sweeps' axes; None means the default for the backend.

  Attributes:
    ks: K of the re-rank-vs-K sweep (default 128, 256, 512, 1024, 2048).
    k_batch: that sweep's query batch (default 8 on an accelerator, 1 on CPU).
    batches: query batches of the re-rank-vs-batch sweep, at the run's K (default 1, 8, 32,
      128, 256 on an accelerator; 1, 2, 4, 8 on CPU).
    train_batches: batches of the training sweep, at the run's training K (default 32, 64, 128,
      256 on an accelerator; 1, 2, 4 on CPU, where a sample takes about a second).
  """

  ks: list[int] | None = None
  k_batch: int | None = None
  batches: list[int] | None = None
  train_batches: list[int] | None = None

  def resolved(self, accel: bool) -> CurveSizes:
    """These sizes with the backend's defaults filled in, each axis ascending without repeats."""
    axis = lambda v, default: sorted(set(v or default))
    return CurveSizes(
        ks=axis(self.ks, [128, 256, 512, 1024, 2048]),
        k_batch=self.k_batch or (8 if accel else 1),
        batches=axis(self.batches, [1, 8, 32, 128, 256] if accel else [1, 2, 4, 8]),
        train_batches=axis(self.train_batches, [32, 64, 128, 256] if accel else [1, 2, 4]))


def _curve(x_name: str, xs: list[int], pts: list[dict], fixed: dict) -> dict:
  """One sweep's JSON: its axis, what was held fixed, a series per implementation, the rows."""
  key = "K" if x_name == "K" else "batch"
  impls = list(dict.fromkeys(r["impl"] for r in pts))
  at = {(r["impl"], r[key]): r for r in pts}
  series = {i: {f: [at.get((i, x), {}).get(f) for x in xs] for f in SERIES_FIELDS}
            for i in impls}
  return {"x_name": x_name, "x": list(xs), "fixed": fixed, "series": series, "rows": pts}


def measure(a: arena_lib.Arena, sizes: CurveSizes, k: int, train_k: int, repeats: int, probe,
            top_flops: float, seed: int) -> dict:
  """Runs the three sweeps.

  Args:
    a: the run's arena (its csa_jax variants and, with PyTorch, eager; no torch.compile).
    sizes: resolved axes (``CurveSizes.resolved``).
    k: K of the re-rank-vs-batch sweep.
    train_k: tokens per training sample of the training sweep.
    repeats: timed rounds per point.
    probe: the memory probe (``memory.memory_probe``).
    top_flops: the run's matmul peak.
    seed: queries and dropout.

  Returns:
    sweep name -> ``{'x_name', 'x', 'fixed', 'series': impl -> field -> per-x values (None where
    the point failed), 'rows'}``.
  """
  c = a.db_NxC.shape[1]
  depth = max(max(sizes.ks), k, a.cfg.anchors - 1)
  q, top = arena_lib.queries(a.db_NxC, max(sizes.k_batch, max(sizes.batches)), depth, seed + 2)
  out, pts = {}, []
  for kk in sizes.ks:
    b = sizes.k_batch
    timed = race.race(a.rerank_fns(q[:b], top[:b], kk), repeats, probe, f"curve re-rank K={kk}")
    pts += rows.result_rows(timed, b, flops.rerank_flops(a.cfg, kk, c), top_flops, K=kk)
  out["rerank_vs_k"] = _curve("K", sizes.ks, pts, {"batch": sizes.k_batch})
  pts = []
  for b in sizes.batches:
    timed = race.race(a.rerank_fns(q[:b], top[:b], k), repeats, probe, f"curve re-rank batch {b}")
    pts += rows.result_rows(timed, b, flops.rerank_flops(a.cfg, k, c), top_flops, K=k)
  out["rerank_vs_batch"] = _curve("batch", sizes.batches, pts, {"K": k})
  data, pts = arena_lib.TrainingData(a.db_NxC, a.cfg.anchors, train_k, seed), []
  for b in sizes.train_batches:
    aff, targets = data.batch(b)
    timed = race.race(a.train_fns(aff, targets, seed), repeats, probe, f"curve train batch {b}")
    pts += rows.result_rows(timed, b, flops.train_flops(a.cfg, train_k), top_flops, K=train_k)
    del timed  # the training states of this batch size, before the next one's
  out["train_vs_batch"] = _curve("batch", sizes.train_batches, pts, {"K": train_k})
  return out


def _json_scalar(o):
  if isinstance(o, np.generic):  # a numpy number in a row
    return o.item()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write(out_dir: str, doc: dict) -> list[str]:
  """Writes curves.json and the sweeps' PNGs into ``out_dir``, all of them or none.

  Args:
    out_dir: the folder (created if missing).
    doc: ``run``'s document; its 'curves' holds the sweeps.

  Returns:
    The paths written, the JSON first.
  """
  paths = [os.path.join(out_dir, JSON_NAME)] + [
      os.path.join(out_dir, f"{name}.png") for name in SWEEPS]
  with atomic_paths(paths) as tmps:
    with open(tmps[0], "w") as f:
      json.dump(doc, f, indent=2, default=_json_scalar)
      f.write("\n")
    for name, tmp in zip(SWEEPS, tmps[1:]):
      curve_plots.save_curve_plot(tmp, name, doc["curves"][name], doc)
  return paths


def run(a: arena_lib.Arena, sizes: CurveSizes, k: int, train_k: int, repeats: int, probe,
        top_flops: float, seed: int, out_dir: str, header: dict) -> dict:
  """Measures the sweeps and writes them (``measure``, ``write``).

  Args:
    a, sizes, k, train_k, repeats, probe, top_flops, seed: as ``measure``.
    out_dir: the folder of curves.json and the PNGs.
    header: what describes the run (command, machine, config), copied into curves.json.

  Returns:
    What the bench's results record: {'dir', 'files', 'sizes'}.
  """
  curves = measure(a, sizes, k, train_k, repeats, probe, top_flops, seed)
  doc = {"schema": SCHEMA, **header, "repeats": repeats, "matmul_peak_flops": top_flops,
         "curves": curves}
  paths = write(out_dir, doc)
  log.info("curves: %s", ", ".join(paths))
  return {"dir": out_dir, "files": [os.path.basename(p) for p in paths],
          "sizes": dataclasses.asdict(sizes)}
