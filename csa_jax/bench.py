"""``csa-jax bench``: csa_jax against the original architecture in PyTorch, same weights, one run.

For each implementation (csa_jax; PyTorch eager as the original runs it; PyTorch + torch.compile):
(a) re-rank throughput in queries/s, affinity construction from C-d descriptors included;
(b) training throughput in samples/s (SGD momentum 0.9, the CSA loss, dropouts on);
(c) the first call (compilation) apart from the steady state; (d) achieved FLOP/s by the cost model
of SPEC section 9 and its fraction of a matmul peak measured in the same run; (e) peak memory.
Before any timing both sides must give the same scores (float32, <= --tol): the race is fair.

Calls of the contestants are interleaved round by round, so load from other processes on a shared
machine hits every contestant alike; the median of the rounds is reported. Progress goes to
stderr, the table to stdout, everything (with a machine description) to a JSON file.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from csa_jax import bench_env
from csa_jax.affinity import rerank_affinity, training_affinity
from csa_jax.config import ModelConfig
from csa_jax.errors import fail
from csa_jax.fileio import write_json
from csa_jax.losses import csa_loss
from csa_jax.rerank import init_params, rerank_scores, training_outputs

SCHEMA = "csa_jax.bench/1"
JAX, EAGER, COMPILED = "csa_jax", "torch_eager", "torch_compile"
WEIGHT_DECAY = 1e-6  # SPEC section 5


class ParityError(AssertionError):
  """csa_jax and PyTorch disagree: timing them against each other would be meaningless."""


# ---------------------------------------------------------------- cost model (SPEC section 9)

def forward_flops(cfg: ModelConfig, n: int, align: bool = False) -> float:
  """Forward FLOPs of one sample of n tokens (matmuls only)."""
  l, d, r = cfg.anchors, cfg.dim, cfg.mlp_ratio
  block = 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * r * n * d * d
  return 2 * n * l * d + cfg.depth * block + (2 * n * d * l if align else 0)


def rerank_flops(cfg: ModelConfig, k: int, c: int) -> float:
  """One query: affinity (K+1, L) from C-d descriptors plus the forward over K+1 tokens."""
  return 2 * (k + 1) * cfg.anchors * c + forward_flops(cfg, k + 1)


def train_flops(cfg: ModelConfig, k: int) -> float:
  """One training sample of K tokens: forward with the alignment head, backward ~2x forward."""
  return 3 * forward_flops(cfg, k, align=True)


# One program instead of one compilation per parameter shape; same values as init_params.
init_jitted = jax.jit(init_params, static_argnums=0)


# ---------------------------------------------------------------- checks

def check_close(a, b, tol: float, what: str) -> float:
  """max |a - b|; raises ParityError above tol (or on NaN)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ParityError(f"{what}: shapes differ, csa_jax {a.shape} vs torch {b.shape}")
  diff = float(np.max(np.abs(a - b))) if a.size else 0.0
  if not diff <= tol:
    raise ParityError(f"{what}: csa_jax and torch differ by {diff:.3g} > tol {tol:g}: not the "
                      "same model, refusing to time them against each other")
  return diff


def rerank_parity(params, cfg: ModelConfig, torch_model, q, db, top, k: int, tol: float) -> float:
  """Scores of csa_jax and the PyTorch model on the same queries, in float32, must agree."""
  from csa_jax import torch_model as tm  # pylint: disable=g-import-not-at-top
  torch = tm.require_torch()
  # True float32 on both sides: JAX's default on GPUs would be TF32 matmuls.
  with jax.default_matmul_precision("highest"):
    s_jax = rerank_scores(params, rerank_affinity(q, db, top, k, cfg.anchors),
                          cfg.replace(dtype="float32"))
  dev = next(torch_model.parameters()).device
  t = [bench_env.to_torch(a, dev) for a in (q, db, top)]
  was_amp, was_training = torch_model.autocast, torch_model.training
  torch_model.autocast = False
  torch_model.eval()
  try:
    with torch.no_grad():
      s_torch = torch_model.forward_feature(torch_affinity(*t, k, cfg.anchors))
  finally:
    torch_model.autocast = was_amp
    torch_model.train(was_training)
  return check_close(s_jax, s_torch.float().cpu().numpy(), tol, "re-rank scores")


@functools.partial(jax.jit, static_argnames=("cfg", "alpha"))
def _eval_loss(params, aff_BxKxL, targets_BxK, cfg, alpha):
  logits_BxK, mse = training_outputs(params, aff_BxKxL, cfg)
  return csa_loss(logits_BxK, targets_BxK, mse, alpha)[0]


def loss_parity(params, cfg: ModelConfig, torch_model, aff, targets, alpha, tol) -> float:
  """The eval-mode training loss (contrastive + alpha * mse) of both sides must agree."""
  from csa_jax import torch_model as tm  # pylint: disable=g-import-not-at-top
  torch = tm.require_torch()
  with jax.default_matmul_precision("highest"):
    loss_jax = _eval_loss(params, aff, targets, cfg.replace(dtype="float32"), alpha)
  dev = next(torch_model.parameters()).device
  was_amp, was_training = torch_model.autocast, torch_model.training
  torch_model.autocast = False
  torch_model.eval()
  try:
    with torch.no_grad():
      x, y = (bench_env.to_torch(a, dev) for a in (aff, targets))
      exp_sim, mse_t = torch_model(x)
      loss_torch, _ = tm.original_loss(exp_sim, y, mse_t, alpha)
  finally:
    torch_model.autocast = was_amp
    torch_model.train(was_training)
  return check_close(loss_jax, loss_torch.item(), tol, "training loss")


# ---------------------------------------------------------------- the contestants

def torch_affinity(q_QxC, db_NxC, top_QxT, k: int, l: int):
  """The original test loop's affinity: [q, db[top[:K]]] @ [q, db[top[:L-1]]]^T, float32."""
  import torch  # pylint: disable=g-import-not-at-top
  tokens = torch.cat([q_QxC[:, None], db_NxC[top_QxT[:, :k]]], dim=1)
  anchors = tokens[:, :l] if l <= k + 1 else torch.cat(
      [q_QxC[:, None], db_NxC[top_QxT[:, :l - 1]]], dim=1)
  return torch.bmm(tokens, anchors.transpose(1, 2))


def jax_rerank_fn(params, cfg, q, db, top, k):
  def run():
    return rerank_scores(params, rerank_affinity(q, db, top, k, cfg.anchors), cfg
                         ).block_until_ready()
  return run


def torch_rerank_fn(model, q, db, top, k, l, sync, compiled=False):
  import torch  # pylint: disable=g-import-not-at-top
  model.eval()
  fwd = torch.compile(model.forward_feature) if compiled else model.forward_feature

  def run():
    with torch.no_grad():  # as the original test loop
      out = fwd(torch_affinity(q, db, top, k, l))
    sync()
    return out
  return run


def jax_train_fn(params, cfg, aff, targets, lr, alpha, seed):
  """csa_jax's training step (``train_step.make_batch_train_step``, the recipe's optimizer) on a
  ready batch, one device, dropouts on. Returns a stateful closure running one step."""
  from csa_jax import optim, train_step  # pylint: disable=g-import-not-at-top
  tx = optim.make_optimizer(base_lr=lr, warmup_lr=lr, final_lr=0.0, warmup_steps=0,
                            total_steps=10_000, momentum=0.9, weight_decay=WEIGHT_DECAY)
  mesh = train_step.make_mesh(jax.devices()[:1])
  step = train_step.make_batch_train_step(cfg, tx, mesh, alpha)
  # Placed exactly like the step's outputs, so the second call does not compile again.
  state = {"s": train_step.put_replicated(train_step.TrainState(
      np.zeros([], np.int32), params, jax.jit(tx.init)(params)), mesh), "i": 0}
  key = jax.random.key(seed)

  def run():
    state["s"], metrics = step(state["s"], aff, targets, jax.random.fold_in(key, state["i"]))
    state["i"] += 1
    return metrics["loss"].block_until_ready()
  return run


def torch_train_fn(model, aff, targets, lr, alpha, sync, compiled=False):
  """The original training loop's step: autocast + GradScaler on CUDA, SGD momentum 0.9 with
  coupled weight decay on the weight matrices, the loss read back every step."""
  import torch  # pylint: disable=g-import-not-at-top
  from csa_jax.torch_model import original_loss  # pylint: disable=g-import-not-at-top
  model.train()
  fwd = torch.compile(model) if compiled else model
  # The original's parameter groups: coupled weight decay on weight matrices only.
  decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith(".bias")]
  rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and not n.endswith(".bias"))]
  opt = torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY},
                         {"params": rest, "weight_decay": 0.0}], lr=lr, momentum=0.9)
  amp = model.autocast and aff.is_cuda
  scaler = torch.amp.GradScaler("cuda", enabled=amp)

  def run():
    exp_sim, mse = fwd(aff)
    loss, _ = original_loss(exp_sim, targets, mse, alpha)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    value = loss.item()  # the original reads the loss every step (non-finite check)
    sync()
    return value
  return run


# ---------------------------------------------------------------- timing

def _is_oom(e: BaseException) -> bool:
  text = f"{type(e).__name__} {e}"
  return "RESOURCE_EXHAUSTED" in text or "OutOfMemory" in text or "out of memory" in text


def race(fns: dict, repeats: int, memory, label: str) -> dict:
  """First call of each contestant alone (compile), then ``repeats`` interleaved rounds.

  Returns {name: {'first_call_s', 'steady_s', 'peak_mem_bytes'} or {'error'}}.
  """
  out, live = {}, {}
  for name, fn in fns.items():
    _progress(f"{label}: {name}: first call (compile)")
    try:
      t0 = time.perf_counter()
      fn()
      out[name] = {"first_call_s": time.perf_counter() - t0}
      out[name]["peak_mem_bytes"], out[name]["peak_mem_method"] = memory(name, fn)
      live[name] = fn
    except Exception as e:  # pylint: disable=broad-except
      # One contestant failing (OOM, torch.compile without a compiler) must not end the race.
      kind = "out of memory" if _is_oom(e) else type(e).__name__
      out[name] = {"error": f"{kind}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
      _progress(f"{label}: {name}: {out[name]['error']}")
  times = {name: [] for name in live}
  for r in range(repeats):
    t_round = time.perf_counter()
    for name, fn in live.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
    _progress(f"{label}: round {r + 1}/{repeats} ({time.perf_counter() - t_round:.1f} s): " +
              ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()))
  for name, ts in times.items():
    out[name]["steady_s"] = ts
    out[name]["steady_median_s"] = float(np.median(ts)) if ts else None
  return out


def matmul_peak(size: int, dtype: str, torch_device=None, repeats: int = 5) -> dict:
  """FLOP/s of a square matmul in each framework; the device peak is the better of the two."""
  flops = 2.0 * size ** 3
  rng = np.random.default_rng(0)
  a = rng.standard_normal((size, size), np.float32)
  res = {"size": size, "dtype": dtype}
  jdt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  aj = jnp.asarray(a, jdt)
  mm = jax.jit(lambda x: x @ x)
  mm(aj).block_until_ready()
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    mm(aj).block_until_ready()
    ts.append(time.perf_counter() - t0)
  res["jax_flops"] = flops / min(ts)
  if torch_device is not None:
    import torch  # pylint: disable=g-import-not-at-top
    tdt = torch.float16 if dtype == "bfloat16" and torch_device.type == "cuda" else torch.float32
    at = torch.as_tensor(a).to(torch_device, tdt)
    sync = _torch_sync(torch_device)
    at @ at
    sync()
    ts = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      at @ at
      sync()
      ts.append(time.perf_counter() - t0)
    res["torch_flops"], res["torch_dtype"] = flops / min(ts), str(tdt).replace("torch.", "")
  res["device_peak_flops"] = max(v for k, v in res.items() if k.endswith("_flops"))
  return res


def _torch_sync(device):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _progress(msg: str):
  print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the run

def _int_list(text: str) -> list[int]:
  try:
    vals = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    vals = []
  if not vals or min(vals) < 1:
    raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, found {text!r}")
  return vals


def parse_args(argv):
  p = argparse.ArgumentParser(prog="csa-jax bench", description=__doc__.split("\n\n")[0])
  g = p.add_argument_group("model (defaults: the paper model)")
  g.add_argument("--anchors", "-L", type=int, default=512)
  g.add_argument("--dim", type=int, default=768)
  g.add_argument("--depth", type=int, default=2)
  g.add_argument("--heads", type=int, default=12)
  g.add_argument("--mlp-ratio", type=int, default=4)
  g.add_argument("--dropout", type=float, default=0.1,
                 help="dropout, attention dropout and drop-path rate in training (paper: 0.1)")
  g = p.add_argument_group("re-ranking")
  g.add_argument("--k", "-K", type=int, default=1024, help="candidates re-ranked per query")
  g.add_argument("--batches", type=_int_list, default=None,
                 help="query batch sizes (default: 1,8,64 on an accelerator, 1,8 on CPU)")
  g.add_argument("--descriptor-dim", type=int, default=2048, help="C, descriptor size")
  g.add_argument("--db", type=int, default=4096, help="database size (>= K)")
  g = p.add_argument_group("training")
  g.add_argument("--train-k", type=int, default=512, help="tokens per training sample")
  g.add_argument("--train-batch", type=int, default=None,
                 help="training batch (default: 256 on an accelerator, halved until it fits; "
                 "8 on CPU)")
  g.add_argument("--no-train", action="store_true")
  g = p.add_argument_group("run")
  g.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10; 3 on CPU)")
  g.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                 help="csa_jax compute dtype; auto: bfloat16 on an accelerator, else float32")
  g.add_argument("--torch-device", default="auto", help="auto: cuda if available, else cpu")
  g.add_argument("--no-torch", action="store_true", help="csa_jax only (no parity check)")
  g.add_argument("--no-compile", action="store_true", help="skip torch.compile")
  g.add_argument("--matmul-size", type=int, default=None, help="default 8192 (accel.), 2048 (CPU)")
  g.add_argument("--tol", type=float, default=1e-4, help="float32 parity tolerance on scores")
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--out", default="bench_results.json", help="JSON results (atomic write)")
  return p.parse_args(argv)


def run(args, argv=()) -> dict:
  """Runs the whole benchmark; returns the results dict (also written to ``args.out``)."""
  accel = jax.default_backend() != "cpu"
  batches = args.batches or ([1, 8, 64] if accel else [1, 8])
  repeats = args.repeats if args.repeats is not None else (10 if accel else 3)
  dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if accel else "float32")
  cfg = ModelConfig(anchors=args.anchors, dim=args.dim, depth=args.depth, heads=args.heads,
                    mlp_ratio=args.mlp_ratio, drop=args.dropout, attn_drop=args.dropout,
                    drop_path=args.dropout)
  run_cfg = cfg.replace(dtype=dtype)
  if args.db < max(args.k, args.anchors - 1, args.train_k, args.anchors):
    raise fail("--db", "db", f">= K, L-1 and train K ({max(args.k, args.anchors, args.train_k)})",
               str(args.db))
  tm = None if args.no_torch else bench_env.try_import_torch_model()
  tdev = bench_env.torch_device(args.torch_device) if tm else None
  sync = _torch_sync(tdev) if tm else None
  res = {"schema": SCHEMA, "command": " ".join(["csa-jax", "bench", *argv]),
         "machine": bench_env.machine_info(tdev),
         "config": {"model": cfg.__dict__ | {"dtype": dtype}, "K": args.k,
                    "descriptor_dim": args.descriptor_dim, "db": args.db, "batches": batches,
                    "train_k": args.train_k, "repeats": repeats, "seed": args.seed,
                    "torch_autocast_fp16": bool(tm and tdev.type == "cuda")},
         "notes": [], "rerank": [], "train": []}
  if not tm:
    res["notes"].append("PyTorch side skipped (--no-torch or torch not installed)")

  # Data: random unit descriptors and their first-round ranking (not timed: the re-ranker's input).
  rng = np.random.default_rng(args.seed)
  db = _unit(rng.standard_normal((args.db, args.descriptor_dim), np.float32))
  q = _unit(rng.standard_normal((max(batches), args.descriptor_dim), np.float32))
  t = max(args.k, args.anchors - 1)
  top = np.argsort(-(q @ db.T), axis=1)[:, :t].astype(np.int32)
  params = init_jitted(cfg, jax.random.key(args.seed))
  dbj = jnp.asarray(db)
  if tm:
    tmodel = tm.torch_model_from_params(params, cfg, tdev)
    dbt = bench_env.to_torch(db, tdev)
    _progress("parity: csa_jax vs PyTorch scores (float32)")
    n = min(2, max(batches))
    diff = rerank_parity(params, cfg, tmodel, q[:n], db, top[:n], args.k, args.tol)
    res["parity"] = {"checked": True, "rerank_max_abs_diff": diff, "tol": args.tol,
                     "queries": n, "dtype": "float32"}
    jax.clear_caches()  # so csa_jax's first timed call pays its compilation, as a user's would
  else:
    res["parity"] = {"checked": False}

  mm_size = args.matmul_size or (8192 if accel else 2048)
  _progress(f"matmul peak ({mm_size}^3, {dtype})")
  res["matmul_peak"] = matmul_peak(mm_size, dtype, tdev if tm else None)
  peak = res["matmul_peak"]["device_peak_flops"]
  memory = bench_env.memory_probe(tdev)

  for b in batches:
    fns = {JAX: jax_rerank_fn(params, run_cfg, jnp.asarray(q[:b]), dbj, jnp.asarray(top[:b]),
                              args.k)}
    if tm:
      qt, topt = bench_env.to_torch(q[:b], tdev), bench_env.to_torch(top[:b], tdev).long()
      fns[EAGER] = torch_rerank_fn(tmodel, qt, dbt, topt, args.k, cfg.anchors, sync)
      if not args.no_compile:
        fns[COMPILED] = torch_rerank_fn(tmodel, qt, dbt, topt, args.k, cfg.anchors, sync, True)
    timed = race(fns, repeats, memory, f"re-rank batch {b}")
    res["rerank"] += _rows(timed, b, rerank_flops(cfg, args.k, args.descriptor_dim), peak)

  if not args.no_train:
    res["train"] = _train(args, cfg, run_cfg, params, db, tm, tdev, sync, repeats, memory, peak,
                          accel, res)
  res["machine"]["loadavg_end"] = list(os.getloadavg())
  write_json(args.out, res)
  return res


def _train(args, cfg, run_cfg, params, db, tm, tdev, sync, repeats, memory, peak, accel, res):
  alpha, lr = 0.2, 1e-3
  k = args.train_k
  # Training samples as SPEC section 2: neighbours inside the set, random cluster labels.
  nbrs = np.argsort(-(db @ db.T), axis=1)[:, :max(k, cfg.anchors)].astype(np.int32)
  clusters = np.random.default_rng(args.seed + 1).integers(0, 16, len(db)).astype(np.int32)
  bt = args.train_batch or (256 if accel else 8)
  while True:
    idx = jnp.arange(bt, dtype=jnp.int32) % len(db)
    aff, targets = training_affinity(jnp.asarray(db), jnp.asarray(nbrs), jnp.asarray(clusters),
                                     idx, k, cfg.anchors)
    fns = {JAX: jax_train_fn(params, run_cfg, aff, targets, lr, alpha, args.seed)}
    if tm:
      if "train_loss_max_abs_diff" not in res["parity"]:
        n = min(2, bt)
        res["parity"]["train_loss_max_abs_diff"] = loss_parity(
            params, cfg, tm.torch_model_from_params(params, cfg, tdev), aff[:n], targets[:n],
            alpha, args.tol)
      at, yt = bench_env.to_torch(np.asarray(aff), tdev), bench_env.to_torch(
          np.asarray(targets), tdev)
      fns[EAGER] = torch_train_fn(tm.torch_model_from_params(params, cfg, tdev), at, yt, lr,
                                  alpha, sync)
      if not args.no_compile:
        fns[COMPILED] = torch_train_fn(tm.torch_model_from_params(params, cfg, tdev), at, yt,
                                       lr, alpha, sync, compiled=True)
    timed = race(fns, repeats, memory, f"train batch {bt}")
    oom = [n for n, r in timed.items() if r.get("error", "").startswith("out of memory")]
    if not oom or bt == 1 or args.train_batch:
      break
    res["notes"].append(f"train batch {bt}: out of memory for {oom}; halving")
    bt //= 2
    del fns, timed
  return _rows(timed, bt, train_flops(cfg, k), peak)


def _rows(timed: dict, batch: int, flops_per_item: float, peak: float) -> list[dict]:
  rows = []
  eager = timed.get(EAGER, {}).get("steady_median_s")
  for name, r in timed.items():
    row = {"impl": name, "batch": batch, **r}
    med = r.get("steady_median_s")
    if med:
      row["items_per_s"] = batch / med
      row["flops_per_item"] = flops_per_item
      row["achieved_flops"] = flops_per_item * batch / med
      row["frac_of_matmul_peak"] = row["achieved_flops"] / peak
      row["speedup_vs_torch_eager"] = eager / med if eager else None
    rows.append(row)
  return rows


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def format_table(res: dict) -> str:
  m, mp = res["machine"], res["matmul_peak"]
  cfgd = res["config"]
  lines = [
      f"csa-jax bench  {m['date']}  {m['cpu_model']} ({m['cpu_count']} CPUs)  jax "
      f"{m['jax_version']} on {m['jax_backend']} [{m['jax_device']}]  torch "
      f"{m.get('torch_version')} on {m.get('torch_device')}",
      f"model L={cfgd['model']['anchors']} D={cfgd['model']['dim']} depth "
      f"{cfgd['model']['depth']} H={cfgd['model']['heads']}, csa_jax dtype "
      f"{cfgd['model']['dtype']}, torch fp16 autocast {cfgd['torch_autocast_fp16']}",
      f"matmul peak {mp['size']}^3 {mp['dtype']}: jax {mp['jax_flops'] / 1e9:.1f} GFLOP/s"
      + (f", torch {mp['torch_flops'] / 1e9:.1f} GFLOP/s" if "torch_flops" in mp else ""),
  ]
  par = res["parity"]
  lines.append("parity: " + (
      f"max |scores diff| {par['rerank_max_abs_diff']:.2e}"
      + (f", |loss diff| {par['train_loss_max_abs_diff']:.2e}"
         if "train_loss_max_abs_diff" in par else "") + f" (tol {par['tol']:g}) OK"
      if par["checked"] else "not checked (no torch)"))
  hdr = (f"{'':6}{'batch':>6}  {'impl':<14}{'first s':>9}{'steady s':>10}{'items/s':>10}"
         f"{'x eager':>9}{'GFLOP/s':>9}{'%peak':>7}{'mem MiB':>9}")
  for part, unit in (("rerank", f"re-ranking K={cfgd['K']} (affinity included), queries/s"),
                     ("train", f"training K={cfgd['train_k']}, samples/s")):
    if not res[part]:
      continue
    lines += ["", unit, hdr]
    for r in res[part]:
      if "error" in r:
        lines.append(f"{part[:6]:6}{r['batch']:>6}  {r['impl']:<14}{r['error']}")
        continue
      sp = r.get("speedup_vs_torch_eager")
      mem = r.get("peak_mem_bytes")
      lines.append(
          f"{part[:6]:6}{r['batch']:>6}  {r['impl']:<14}{r['first_call_s']:>9.2f}"
          f"{r['steady_median_s']:>10.3f}{r['items_per_s']:>10.2f}"
          f"{(f'{sp:.2f}' if sp else '-'):>9}{r['achieved_flops'] / 1e9:>9.1f}"
          f"{100 * r['frac_of_matmul_peak']:>7.1f}"
          f"{(f'{mem / 2**20:.0f}' if mem is not None else '-'):>9}")
  lines += [""] + [f"note: {n}" for n in res["notes"]]
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  # Before JAX touches a GPU: do not grab 75% of its memory, PyTorch runs in the same process.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  args = parse_args(argv)
  res = run(args, argv)
  print(format_table(res))
  _progress(f"results written to {args.out}")
  return 0
