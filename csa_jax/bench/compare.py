"""csa_jax against the original architecture in PyTorch, same weights, one process: ``run``.

For each implementation (csa_jax; PyTorch eager as the original runs it; PyTorch + torch.compile):
(a) re-rank throughput in queries/s, affinity construction from C-d descriptors included;
(b) training throughput in samples/s (SGD momentum 0.9, the CSA loss, dropouts on);
(c) the first call (compilation) apart from the steady state; (d) achieved FLOP/s by the cost
model of docs/method.md section 9 and its fraction of a matmul peak measured in the same run;
(e) peak memory. Before any timing both sides must give the same scores (float32, <= tol).
``csa-jax bench`` (``cli/bench.py``) is the command line over ``run``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex

import jax
import jax.numpy as jnp
import numpy as np

from csa_jax.bench import contestants as ct
from csa_jax.bench import flops, machine, memory, parity, peak, race
from csa_jax.core.affinity import training_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import init_params
from csa_jax.core.normalize import l2_normalize
from csa_jax.errors import fail
from csa_jax.fileio import check_output_path, write_json
from csa_jax.run_info import run_info

SCHEMA = "csa_jax.bench.compare/1"
ALPHA, LR = 0.2, 1e-3  # the loss's MSE weight (docs/method.md section 4); any small rate

log = logging.getLogger(__name__)

# One program instead of one compilation per parameter shape; same values as init_params.
init_jitted = jax.jit(init_params, static_argnums=0)


@dataclasses.dataclass
class Settings:
  """What ``run`` benchmarks; None means the default for the backend (accelerator or CPU).

  Attributes:
    anchors, dim, depth, heads, mlp_ratio: the model (defaults: the paper model).
    dropout: dropout, attention dropout and drop-path rate in training.
    k: candidates re-ranked per query.
    batches: query batch sizes (None: 1, 8, 64 on an accelerator; 1, 8 on CPU).
    descriptor_dim: C.
    db: database size, >= K, L-1 and train_k.
    train_k: tokens per training sample.
    train_batch: training batch (None: 256 on an accelerator, halved on out-of-memory; 8 on CPU).
    train: race the training step too.
    repeats: timed rounds (None: 10; 3 on CPU).
    dtype: csa_jax's compute dtype, "auto" (bfloat16 on an accelerator), "float32", "bfloat16".
    torch: race PyTorch too (when it is installed), after the parity check.
    torch_device: "auto" (cuda if available) or a torch device name.
    compile: race torch.compile too.
    matmul_size: the peak matmul's side (None: 8192 on an accelerator, 2048 on CPU).
    tol: float32 parity tolerance.
    seed: data and parameters.
    out: the JSON results file (written atomically).
  """

  anchors: int = 512
  dim: int = 768
  depth: int = 2
  heads: int = 12
  mlp_ratio: int = 4
  dropout: float = 0.1
  k: int = 1024
  batches: list[int] | None = None
  descriptor_dim: int = 2048
  db: int = 4096
  train_k: int = 512
  train_batch: int | None = None
  train: bool = True
  repeats: int | None = None
  dtype: str = "auto"
  torch: bool = True
  torch_device: str = "auto"
  compile: bool = True
  matmul_size: int | None = None
  tol: float = 1e-4
  seed: int = 0
  out: str = "bench_results.json"


def run(s: Settings, command: str = "csa-jax bench") -> dict:
  """Runs the whole benchmark.

  Args:
    s: what to run.
    command: the command line, recorded in the results.

  Returns:
    The results (schema ``SCHEMA``: machine, config, parity, matmul_peak, rerank and train rows,
    notes), also written to ``s.out``.

  Raises:
    InputError: a bad model shape or database size, or an unwritable ``s.out`` (before any work).
    ParityError: the two implementations disagree.
  """
  check_output_path(s.out)  # before minutes of benchmarking, not after
  accel = jax.default_backend() != "cpu"
  batches = s.batches or ([1, 8, 64] if accel else [1, 8])
  repeats = s.repeats if s.repeats is not None else (10 if accel else 3)
  dtype = s.dtype if s.dtype != "auto" else ("bfloat16" if accel else "float32")
  try:
    cfg = ModelConfig(anchors=s.anchors, dim=s.dim, depth=s.depth, heads=s.heads,
                      mlp_ratio=s.mlp_ratio, drop=s.dropout, attn_drop=s.dropout,
                      drop_path=s.dropout)
  except ValueError as e:
    raise fail("command line", "model", "a valid model shape", str(e)) from None
  run_cfg = cfg.replace(dtype=dtype)
  if s.db < max(s.k, s.anchors - 1, s.train_k, s.anchors):
    raise fail("--db", "db", f">= K, L-1 and train K ({max(s.k, s.anchors, s.train_k)})",
               str(s.db))
  tm = machine.try_import_torch_model() if s.torch else None
  tdev = machine.torch_device(s.torch_device) if tm else None
  sync = machine.torch_sync(tdev) if tm else None
  res = {"schema": SCHEMA, "command": command, "machine": machine.machine_info(tdev),
         "config": {"model": cfg.__dict__ | {"dtype": dtype}, "K": s.k,
                    "descriptor_dim": s.descriptor_dim, "db": s.db, "batches": batches,
                    "train_k": s.train_k, "repeats": repeats, "seed": s.seed,
                    "torch_autocast_fp16": bool(tm and tdev.type == "cuda")},
         "notes": [], "rerank": [], "train": []}
  res["run"] = run_info(shlex.split(command), seed=s.seed)
  if not tm:
    res["notes"].append("PyTorch side skipped (--no-torch or torch not installed)")
  if not accel and s.batches is None:
    res["notes"].append("CPU: re-rank batch 64 skipped by default for time; --batches 1,8,64")
  res["notes"].append("csa_jax training step: train_step.make_batch_train_step + "
                      "optim.make_optimizer (SGD momentum 0.9, wd 1e-6 on weights), ready batch")

  # Random unit descriptors and their first-round ranking (not timed: the re-ranker's input).
  rng = np.random.default_rng(s.seed)
  db = l2_normalize(rng.standard_normal((s.db, s.descriptor_dim), np.float32))
  q = l2_normalize(rng.standard_normal((max(batches), s.descriptor_dim), np.float32))
  top = np.argsort(-(q @ db.T), axis=1)[:, :max(s.k, s.anchors - 1)].astype(np.int32)
  params = init_jitted(cfg, jax.random.key(s.seed))
  if tm:
    tmodel = tm.torch_model_from_params(params, cfg, tdev)
    log.info("parity: csa_jax vs PyTorch scores (float32)")
    n = min(2, max(batches))
    diff = parity.rerank_parity(params, cfg, tmodel, q[:n], db, top[:n], s.k, s.tol)
    res["parity"] = {"checked": True, "rerank_max_abs_diff": diff, "tol": s.tol, "queries": n,
                     "dtype": "float32"}
    jax.clear_caches()  # so csa_jax's first timed call pays its compilation, as a user's would
  else:
    res["parity"] = {"checked": False}

  mm_size = s.matmul_size or (8192 if accel else 2048)
  log.info("matmul peak (%d^3, %s)", mm_size, dtype)
  res["matmul_peak"] = peak.matmul_peak(mm_size, dtype, tdev)
  top_flops = res["matmul_peak"]["device_peak_flops"]
  probe = memory.memory_probe(tdev)

  dbj, dbt = jnp.asarray(db), machine.to_torch(db, tdev) if tm else None
  for b in batches:
    fns = {ct.JAX: ct.jax_rerank_fn(params, run_cfg, jnp.asarray(q[:b]), dbj,
                                    jnp.asarray(top[:b]), s.k)}
    if tm:
      qt, topt = machine.to_torch(q[:b], tdev), machine.to_torch(top[:b], tdev)
      fns[ct.EAGER] = ct.torch_rerank_fn(tmodel, qt, dbt, topt, s.k, cfg.anchors, sync)
      if s.compile:
        fns[ct.COMPILED] = ct.torch_rerank_fn(tmodel, qt, dbt, topt, s.k, cfg.anchors, sync,
                                              compiled=True)
    timed = race.race(fns, repeats, probe, f"re-rank batch {b}")
    res["rerank"] += _rows(timed, b, flops.rerank_flops(cfg, s.k, s.descriptor_dim), top_flops)

  if s.train:
    res["train"] = _train(s, cfg, run_cfg, params, db, tm, tdev, sync, repeats, probe,
                          top_flops, accel, res)
  if any(r.get("frac_of_matmul_peak", 0) > 1 for r in res["rerank"] + res["train"]):
    res["notes"].append("a contestant exceeds the measured matmul peak: the machine's load "
                        "changed during the run, or the peak matmul's size suits it worse")
  res["machine"]["loadavg_end"] = list(os.getloadavg())
  write_json(s.out, res)
  return res


def _train(s, cfg, run_cfg, params, db, tm, tdev, sync, repeats, probe, top_flops, accel, res):
  k = s.train_k
  # Training samples as docs/method.md section 2: neighbours inside the set, random cluster labels.
  nbrs = np.argsort(-(db @ db.T), axis=1)[:, :max(k, cfg.anchors)].astype(np.int32)
  clusters = np.random.default_rng(s.seed + 1).integers(0, 16, len(db)).astype(np.int32)
  bt = s.train_batch or (256 if accel else 8)
  while True:
    idx = jnp.arange(bt, dtype=jnp.int32) % len(db)
    aff, targets = training_affinity(jnp.asarray(db), jnp.asarray(nbrs), jnp.asarray(clusters),
                                     idx, k, cfg.anchors)
    fns = {ct.JAX: ct.jax_train_fn(params, run_cfg, aff, targets, LR, ALPHA, s.seed)}
    if tm:
      if "train_loss_max_abs_diff" not in res["parity"]:
        n = min(2, bt)
        res["parity"]["train_loss_max_abs_diff"] = parity.loss_parity(
            params, cfg, tm.torch_model_from_params(params, cfg, tdev), aff[:n], targets[:n],
            ALPHA, s.tol)
      at = machine.to_torch(np.asarray(aff), tdev)
      yt = machine.to_torch(np.asarray(targets), tdev)
      fns[ct.EAGER] = ct.torch_train_fn(tm.torch_model_from_params(params, cfg, tdev), at, yt,
                                        LR, ALPHA, sync)
      if s.compile:
        fns[ct.COMPILED] = ct.torch_train_fn(tm.torch_model_from_params(params, cfg, tdev), at,
                                             yt, LR, ALPHA, sync, compiled=True)
    timed = race.race(fns, repeats, probe, f"train batch {bt}")
    oom = [n for n, r in timed.items() if r.get("error", "").startswith("out of memory")]
    if not oom or bt == 1 or s.train_batch:
      break
    res["notes"].append(f"train batch {bt}: out of memory for {oom}; halving")
    bt //= 2
    del fns, timed
  return _rows(timed, bt, flops.train_flops(cfg, k), top_flops)


def _rows(timed: dict, batch: int, flops_per_item: float, top_flops: float) -> list[dict]:
  """One result row per contestant: throughput, FLOP/s, fraction of peak, speed-up vs eager."""
  rows = []
  eager = timed.get(ct.EAGER, {}).get("steady_median_s")
  for name, r in timed.items():
    row = {"impl": name, "batch": batch, **r}
    med = r.get("steady_median_s")
    if med:
      row["compile_s"] = max(r["first_call_s"] - med, 0.0)  # the first call's extra cost
      row["items_per_s"] = batch / med
      row["flops_per_item"] = flops_per_item
      row["achieved_flops"] = flops_per_item * batch / med
      row["frac_of_matmul_peak"] = row["achieved_flops"] / top_flops
      row["speedup_vs_torch_eager"] = eager / med if eager else None
    rows.append(row)
  return rows
