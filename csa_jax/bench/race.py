"""The pieces of ``csa-jax bench``: cost model, parity checks, contestants and the timed race.

A contestant is a no-argument callable that runs one step (a re-ranking batch or a training
step) to completion, synchronising its device. ``race`` times the first call of each alone (the
compilation) and then interleaves them round by round, so load from other processes on a shared
machine hits every contestant alike. torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from csa_jax.bench import machine as bench_env
from csa_jax.core.affinity import rerank_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.losses import csa_loss
from csa_jax.core.forward import init_params, rerank_scores, training_outputs

JAX, EAGER, COMPILED = "csa_jax", "torch_eager", "torch_compile"
WEIGHT_DECAY = 1e-6  # docs/method.md section 5


class ParityError(AssertionError):
  """csa_jax and PyTorch disagree: timing them against each other would be meaningless."""


# ---------------------------------------------------------------- cost model (docs/method.md section 9)

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
  from csa_jax.interop import torch_reference as tm  # pylint: disable=g-import-not-at-top
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
  from csa_jax.interop import torch_reference as tm  # pylint: disable=g-import-not-at-top
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
  from csa_jax.train import optim
  from csa_jax.train import step as train_step  # pylint: disable=g-import-not-at-top
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
  from csa_jax.interop.torch_reference import original_loss  # pylint: disable=g-import-not-at-top
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
    progress(f"{label}: {name}: first call (compile)")
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
      progress(f"{label}: {name}: {out[name]['error']}")
  times = {name: [] for name in live}
  for r in range(repeats):
    t_round = time.perf_counter()
    for name, fn in live.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
    progress(f"{label}: round {r + 1}/{repeats} ({time.perf_counter() - t_round:.1f} s): " +
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
    sync = torch_sync(torch_device)
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


def torch_sync(device):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def progress(msg: str):
  print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
