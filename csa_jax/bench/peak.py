"""The matrix-multiply peak that ``csa-jax bench`` reports its %peak against.

A square matmul, in each framework, measured in the same process as the contestants. A cold probe
under-reports (clocks not yet up, thread pools and caches not warm, one short call dominated by
dispatch and synchronisation), which once put csa_jax at 119% of "peak"; so the probe warms up
for a while, times runs of back-to-back calls long enough to amortise the synchronisation, and
keeps the best of several runs.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from csa_jax.bench import machine

WARMUP_S = 0.5  # untimed calls after compilation, at least this long (and at least 2 calls)
MIN_RUN_S = 0.05  # each timed run: enough back-to-back calls to last about this long
MAX_CALLS_PER_RUN = 1000


def best_rate(run, flops_per_call: float, repeats: int = 5, warmup_s: float = WARMUP_S,
              min_run_s: float = MIN_RUN_S, clock=time.perf_counter) -> tuple[float, int]:
  """FLOP/s of the fastest of ``repeats`` timed runs, after a warm-up.

  Args:
    run: ``run(calls)`` issues ``calls`` back-to-back calls and returns when the last finished.
    flops_per_call: FLOPs of one call.
    repeats: timed runs; the fastest counts.
    warmup_s: untimed calls for at least this long after the first (compiling) call.
    min_run_s: calls per timed run are chosen so a run lasts about this long.
    clock: seconds, monotonic (tests pass a simulated one).

  Returns:
    (FLOP/s of the fastest run, calls per run).
  """
  run(1)  # compilation, allocation: not warm-up time
  deadline, warm, t_call = clock() + warmup_s, 0, 0.0
  while warm < 2 or clock() < deadline:
    t0 = clock()
    run(1)
    t_call = clock() - t0
    warm += 1
  calls = int(min(MAX_CALLS_PER_RUN, max(1, math.ceil(min_run_s / max(t_call, 1e-9)))))
  best = math.inf
  for _ in range(repeats):
    t0 = clock()
    run(calls)
    best = min(best, clock() - t0)
  return flops_per_call * calls / best, calls


def _jax_run(a):
  mm = jax.jit(lambda x: x @ x)

  def run(calls):
    for _ in range(calls):
      out = mm(a)  # dispatched asynchronously: the device runs them back to back
    out.block_until_ready()
  return run


def _torch_run(a, sync):
  def run(calls):
    for _ in range(calls):
      a @ a
    sync()
  return run


def matmul_peak(size: int, dtype: str, torch_device=None, repeats: int = 5,
                warmup_s: float = WARMUP_S, min_run_s: float = MIN_RUN_S) -> dict:
  """FLOP/s of a ``size``^3 matmul in JAX (and torch); the device peak is the better of the two.

  Args:
    size: the square matrices' side.
    dtype: "float32" or "bfloat16" (torch uses float16 for the latter on CUDA, as its autocast).
    torch_device: the ``torch.device`` to measure torch on, or None for JAX only.
    repeats: timed runs per framework (``best_rate``).
    warmup_s: warm-up per framework.
    min_run_s: length of each timed run.

  Returns:
    {'size', 'dtype', 'jax_flops', ['torch_flops', 'torch_dtype'], 'device_peak_flops',
    'calls_per_run', 'method'}.
  """
  flops = 2.0 * size ** 3
  a = np.random.default_rng(0).standard_normal((size, size), np.float32)
  res = {"size": size, "dtype": dtype}
  jdt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  res["jax_flops"], calls = best_rate(_jax_run(jnp.asarray(a, jdt)), flops, repeats, warmup_s,
                                      min_run_s)
  res["calls_per_run"] = {"jax": calls}
  if torch_device is not None:
    import torch  # pylint: disable=g-import-not-at-top
    tdt = torch.float16 if dtype == "bfloat16" and torch_device.type == "cuda" else torch.float32
    at = torch.as_tensor(a).to(torch_device, tdt)
    res["torch_flops"], calls = best_rate(_torch_run(at, machine.torch_sync(torch_device)),
                                          flops, repeats, warmup_s, min_run_s)
    res["torch_dtype"] = str(tdt).replace("torch.", "")
    res["calls_per_run"]["torch"] = calls
  res["device_peak_flops"] = max(v for k, v in res.items() if k.endswith("_flops"))
  res["method"] = (f"best of {repeats} runs of back-to-back calls (>= {min_run_s:g} s each) "
                   f"after >= {warmup_s:g} s of warm-up")
  return res
