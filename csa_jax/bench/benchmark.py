"""The benchmark's entry, ``run_benchmark(Settings())``: csa_jax against PyTorch, same weights.

csa_jax against the original architecture in PyTorch, in one process.

For each implementation (csa_jax; PyTorch eager as the original runs it; PyTorch + torch.compile):
(a) re-rank throughput in queries/s, affinity construction from C-d descriptors included;
(b) training throughput in samples/s (SGD momentum 0.9, the CSA loss, dropouts on);
(c) the first call (compilation) apart from the steady state; (d) achieved FLOP/s by the cost
model of docs/method.md section 9 and its fraction of a matmul peak measured in the same run;
(e) peak memory, in all and per query or sample. Before any timing both sides must give the same
scores (float32, <= tol). csa_jax races once per attention implementation asked for
(``arena.jax_names``), each checked against PyTorch. With ``curves`` set, the cost curves
(``curves``) follow, on the same weights. ``csa-jax bench`` (``cli/bench.py``) is the command
line over ``run_benchmark``; the other modules of ``csa_jax.bench`` are its parts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex

import jax

from csa_jax.bench import arena as arena_lib
from csa_jax.bench import compiled_attention, flops, machine, memory, parity, peak, race, rows
from csa_jax.bench import curves as curves_lib
from csa_jax.bench import warm_start as warm_start_lib
from csa_jax.core import attention as attention_lib
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import init_params
from csa_jax.errors import fail
from csa_jax.fileio import check_output_path, write_json
from csa_jax.run_info import run_info

# The results format's name, kept from when this module was compare.py: files written then
# still match it.
SCHEMA = "csa_jax.bench.compare/1"

log = logging.getLogger(__name__)

# One program instead of one compilation per parameter shape; same values as init_params.
init_jitted = jax.jit(init_params, static_argnums=0)


@dataclasses.dataclass
class Settings:
  """What ``run_benchmark`` benchmarks; None means the default for the backend (accelerator or CPU).

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
    warm_start: measure a second process's first call with the compilation cache
      (``warm_start``), re-ranking at the smallest batch and (with ``train``) one training step.
    repeats: timed rounds (None: 10; 3 on CPU).
    dtype: csa_jax's compute dtype, "auto" (bfloat16 on an accelerator), "float32", "bfloat16".
    torch: race PyTorch too (when it is installed), after the parity check.
    torch_device: "auto" (cuda if available) or a torch device name.
    compile: race torch.compile too.
    matmul_size: the peak matmul's side (None: 8192 on an accelerator, 2048 on CPU).
    tol: float32 parity tolerance.
    seed: data and parameters.
    out: the JSON results file (written atomically).
    attention: csa_jax's attention implementations (``ModelConfig.attention``), each its own
      contestant; the first stands for csa_jax.
    curves: a folder for the cost curves (``curves``), or None for none.
    curve_ks, curve_k_batch, curve_batches, curve_train_batches: their axes
      (``curves.CurveSizes``; None: the backend's defaults).
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
  warm_start: bool = True
  repeats: int | None = None
  dtype: str = "auto"
  torch: bool = True
  torch_device: str = "auto"
  compile: bool = True
  matmul_size: int | None = None
  tol: float = 1e-4
  seed: int = 0
  out: str = "bench_results.json"
  attention: list[str] = dataclasses.field(default_factory=lambda: ["auto"])
  curves: str | None = None
  curve_ks: list[int] | None = None
  curve_k_batch: int | None = None
  curve_batches: list[int] | None = None
  curve_train_batches: list[int] | None = None


def run_benchmark(s: Settings, command: str = "csa-jax bench") -> dict:
  """Runs the whole benchmark.

  Args:
    s: what to run.
    command: the command line, recorded in the results.

  Returns:
    The results (schema ``SCHEMA``: machine, config, parity, matmul_peak, rerank and train rows,
    notes, and with ``s.curves`` where the curves went), also written to ``s.out``.

  Raises:
    InputError: a bad model shape or database size, or an unwritable ``s.out`` or ``s.curves``
      (before any work).
    ParityError: the two implementations disagree.
  """
  check_output_path(s.out)  # before minutes of benchmarking, not after
  if s.curves:
    check_output_path(os.path.join(s.curves, curves_lib.JSON_NAME), "--curves")
  accel = jax.default_backend() != "cpu"
  batches = s.batches or ([1, 8, 64] if accel else [1, 8])
  repeats = s.repeats if s.repeats is not None else (10 if accel else 3)
  dtype = s.dtype if s.dtype != "auto" else ("bfloat16" if accel else "float32")
  names = arena_lib.jax_names(s.attention)
  try:
    cfg = ModelConfig(anchors=s.anchors, dim=s.dim, depth=s.depth, heads=s.heads,
                      mlp_ratio=s.mlp_ratio, drop=s.dropout, attn_drop=s.dropout,
                      drop_path=s.dropout, attention=s.attention[0])
    jax_cfgs = {n: cfg.replace(dtype=dtype, attention=a) for n, a in names.items()}
  except ValueError as e:
    raise fail("command line", "model", "a valid model shape", str(e)) from None
  sizes = curves_lib.CurveSizes(s.curve_ks, s.curve_k_batch, s.curve_batches,
                                s.curve_train_batches).resolved(accel)
  need = max(s.k, s.anchors, s.train_k, *(sizes.ks if s.curves else []))
  if s.db < need:
    raise fail("--db", "db", f">= K, L, train K and the curves' K ({need})", str(s.db))
  tm = machine.try_import_torch_model() if s.torch else None
  tdev = machine.torch_device(s.torch_device) if tm else None
  res = {"schema": SCHEMA, "command": command, "machine": machine.machine_info(tdev),
         "config": {"model": cfg.__dict__ | {"dtype": dtype}, "K": s.k,
                    "descriptor_dim": s.descriptor_dim, "db": s.db, "batches": batches,
                    "train_k": s.train_k, "repeats": repeats, "seed": s.seed,
                    "attention": _attention_record(jax_cfgs),
                    "csa_jax": next(iter(names)),
                    "torch_autocast_fp16": bool(tm and tdev.type == "cuda")},
         "notes": [], "rerank": [], "train": []}
  res["run"] = run_info(shlex.split(command), seed=s.seed)
  if not tm:
    res["notes"].append("PyTorch side skipped (--no-torch or torch not installed)")
  if not accel and s.batches is None:
    res["notes"].append("CPU: re-rank batch 64 skipped by default for time; --batches 1,8,64")
  res["notes"].append("csa_jax training step: train_step.make_batch_train_step + "
                      "optim.make_optimizer (SGD momentum 0.9, wd 1e-6 on weights), ready batch")
  if len(names) > 1:
    res["notes"].append(f"one csa_jax contestant per attention; {next(iter(names))} (the first) "
                        "stands for csa_jax")

  db = arena_lib.random_database(s.db, s.descriptor_dim, s.seed)
  q, top = arena_lib.queries(db, max(batches), max(s.k, s.anchors - 1), s.seed + 2)
  a = arena_lib.Arena(init_jitted(cfg, jax.random.key(s.seed)), cfg, jax_cfgs, db, tm, tdev)
  if tm:
    n = min(2, max(batches))
    per = parity.arena_rerank_parity(a, q[:n], top[:n], s.k, s.tol)
    log.info("parity: csa_jax vs PyTorch scores (float32): %s", per)
    res["parity"] = {"checked": True, "rerank_max_abs_diff": _worst(per, "rerank_max_abs_diff"),
                     "tol": s.tol, "queries": n, "dtype": "float32", "per_impl": per}
    jax.clear_caches()  # so csa_jax's first timed call pays its compilation, as a user's would
  else:
    res["parity"] = {"checked": False}

  mm_size = s.matmul_size or (8192 if accel else 2048)
  log.info("matmul peak (%d^3, %s)", mm_size, dtype)
  res["matmul_peak"] = peak.matmul_peak(mm_size, dtype, tdev)
  top_flops = res["matmul_peak"]["device_peak_flops"]
  probe = memory.memory_probe(tdev)

  for b in batches:
    fns = a.rerank_fns(q[:b], top[:b], s.k, s.compile)
    timed = race.race(fns, repeats, probe, f"re-rank batch {b}")
    _attention_ran(timed, fns, b, cfg.heads, s.k + 1)
    res["rerank"] += rows.result_rows(timed, b, flops.rerank_flops(cfg, s.k, s.descriptor_dim),
                                      top_flops)
  if s.train:
    res["train"] = _train(s, a, repeats, probe, top_flops, accel, res)
  if s.warm_start:
    res["warm_start"] = _warm_start(s, jax_cfgs[a.primary], min(batches),
                                    res["train"][0]["batch"] if res["train"] else None)
  if s.curves:
    header = {k: res[k] for k in ("command", "machine", "config")}
    res["curves"] = curves_lib.run(a, sizes, s.k, s.train_k, repeats, probe, top_flops, s.seed,
                                   s.curves, header)
  if any(r.get("frac_of_matmul_peak", 0) > 1 for r in res["rerank"] + res["train"]):
    res["notes"].append("a contestant exceeds the measured matmul peak: the machine's load "
                        "changed during the run, or the peak matmul's size suits it worse")
  res["machine"]["loadavg_end"] = list(os.getloadavg())
  write_json(s.out, res)
  return res


def _attention_record(jax_cfgs: dict) -> dict:
  """Per csa_jax contestant, the attention asked for and what it resolves to on this backend."""
  backend = jax.default_backend()
  return {n: {"asked": c.attention,
              "rerank": attention_lib.resolve(c, backend, dropout=False),
              # Training runs with attention dropout when attn_drop > 0, which rules out cuDNN.
              "train": attention_lib.resolve(c, backend, dropout=c.attn_drop > 0)}
          for n, c in jax_cfgs.items()}


def _attention_ran(timed: dict, fns: dict, batch: int, heads: int, tokens: int) -> None:
  """Adds to each csa_jax contestant's timings the attention its compiled program runs."""
  for name, fn in fns.items():
    if hasattr(fn, "hlo_text") and "error" not in timed[name]:
      timed[name]["attention_ran"] = compiled_attention.attention_ran(fn.hlo_text(), batch, heads,
                                                                      tokens)


def _warm_start(s: Settings, cfg: ModelConfig, batch: int, train_batch: int | None) -> dict:
  """``warm_start.measure`` of the csa_jax contestant's re-ranking and training step."""
  base = {"model": cfg.__dict__, "descriptor_dim": s.descriptor_dim, "db": s.db, "seed": s.seed}
  out = {"rerank": {"batch": batch, **warm_start_lib.measure(
      warm_start_lib.Spec(k=s.k, batch=batch, part="rerank", **base))}}
  if train_batch:
    out["train"] = {"batch": train_batch, **warm_start_lib.measure(
        warm_start_lib.Spec(k=s.train_k, batch=train_batch, part="train", **base))}
  return out


def _worst(per: dict, field: str) -> float:
  return max(p[field] for p in per.values())


def _train(s, a, repeats, probe, top_flops, accel, res):
  data = arena_lib.TrainingData(a.db_NxC, a.cfg.anchors, s.train_k, s.seed)
  bt = s.train_batch or (256 if accel else 8)
  while True:
    aff, targets = data.batch(bt)
    if a.tm and "train_loss_max_abs_diff" not in res["parity"]:
      n = min(2, bt)
      diffs = parity.arena_loss_parity(a, aff[:n], targets[:n], arena_lib.ALPHA, s.tol)
      for name, d in diffs.items():
        res["parity"]["per_impl"][name]["train_loss_max_abs_diff"] = d
      res["parity"]["train_loss_max_abs_diff"] = _worst(res["parity"]["per_impl"],
                                                        "train_loss_max_abs_diff")
    fns = a.train_fns(aff, targets, s.seed, s.compile)
    timed = race.race(fns, repeats, probe, f"train batch {bt}")
    oom = [n for n, r in timed.items() if r.get("error", "").startswith("out of memory")]
    if not oom or bt == 1 or s.train_batch:
      break
    res["notes"].append(f"train batch {bt}: out of memory for {oom}; halving")
    bt //= 2
    del timed, fns
  _attention_ran(timed, fns, bt, a.cfg.heads, s.train_k)
  return rows.result_rows(timed, bt, flops.train_flops(a.cfg, s.train_k), top_flops)
