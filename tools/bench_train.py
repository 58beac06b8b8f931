"""Training throughput of the paper model: samples/s and the compiled step's memory.

  python tools/bench_train.py [--batch 32] [--dtypes float32,bfloat16] [--microbatches 1,4]
                              [--attention auto] [--steps 3] [--compile-only]

Times ``csa_jax.train.step.make_train_step`` (the step ``csa-jax train`` runs: affinities and
targets built on device from descriptors, forward, backward, SGD update) at K=512, L=512, D=768,
depth 2, 12 heads, dropout on, on every local device (one on a plain CPU), over a random
clustered training set (``train_set.random_train_set``; the cost does not depend on the values).
Compilation is timed apart; steady-state samples/s is the mean over ``--steps`` timed steps after
``--warmup`` untimed ones. FLOPs follow docs/method.md section 9 (``bench.flops.train_flops``:
training ~ 3x forward). Progress on stderr; the table on stdout; ``--json PATH`` writes the numbers.

Memory is XLA's ``memory_analysis()`` of the compiled step, per dtype and per
``train.microbatches`` value (``--microbatches``: gradient accumulation, csa_jax/train/
accumulate.py); "temp/sample" is its temporaries divided by the global batch. ``--compile-only``
compiles and reports memory without running a step, so a batch too large for this machine's
memory can still be sized.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import jax
import numpy as np

from csa_jax import parallel
from csa_jax.bench.flops import train_flops
from csa_jax.core.config import ModelConfig
from csa_jax.errors import InputError
from csa_jax.train import optim
from csa_jax.train import step as train_step
from csa_jax.train.train_set import random_train_set


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _memory(compiled) -> dict:
  ma = compiled.memory_analysis()
  if ma is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  return {f: int(getattr(ma, f)) for f in fields if hasattr(ma, f)}


def _device_peak() -> int | None:
  """The first local device's peak bytes in use so far (process-wide; None where not reported)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def bench(dtype: str, batch: int, K: int, L: int, dim: int, depth: int, heads: int, steps: int,
          warmup: int, samples: int, descriptor_dim: int, microbatches: int = 1,
          compile_only: bool = False, attention: str = "auto") -> dict:
  cfg = ModelConfig(anchors=L, dim=dim, depth=depth, heads=heads, dtype=dtype,
                    attention=attention)
  mesh = parallel.make_mesh(jax.local_devices())
  train_step.check_microbatches(batch, microbatches, mesh, source="--batch/--microbatches")
  tx = optim.make_optimizer(base_lr=0.025, warmup_lr=0.00025, final_lr=0.0, warmup_steps=100,
                            total_steps=1000, weight_decay=1e-6)
  data = random_train_set(samples, max(1, samples // 20), descriptor_dim, max(K, L), seed=0)
  arrays = parallel.put_replicated((data.feats_NxC, data.nbrs_NxM, data.clusters_N), mesh)
  state = train_step.init_state(cfg, tx, jax.random.key(0), mesh)
  step = train_step.make_train_step(cfg, tx, mesh, 0.2, K, L, microbatches=microbatches)
  order = np.random.default_rng(1).permutation(samples).astype(np.int32)
  idx = lambda i: train_step.global_batch_array(
      np.take(order, np.arange(i * batch, (i + 1) * batch), mode="wrap"), mesh, batch)
  key = jax.random.key(1)
  name = f"{dtype} m={microbatches}"
  t0 = time.perf_counter()
  compiled = step.jitted.lower(state, arrays, idx(0), key).compile()
  compile_s = time.perf_counter() - t0
  mem = _memory(compiled)
  print(f"bench_train: {name}: compiled in {compile_s:.1f} s; memory {mem}", file=sys.stderr)
  row = {"dtype": dtype, "batch": batch, "microbatches": microbatches, "attention": attention,
         "K": K, "L": L,
         "dim": dim, "depth": depth, "heads": heads, "devices": mesh.size,
         "compile_s": compile_s, "memory": mem,
         "temp_bytes_per_sample": mem.get("temp_size_in_bytes", 0) / batch}
  if compile_only:
    return row
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, m = compiled(state, arrays, idx(i), jax.random.fold_in(key, i))
    jax.block_until_ready(m)
    dt = time.perf_counter() - t0
    print(f"bench_train: {name}: step {i + 1}/{warmup + steps} {dt:.2f} s "
          f"(loss {float(m['loss']):.4f})" + (" [warm-up]" if i < warmup else ""),
          file=sys.stderr)
    if i >= warmup:
      times.append(dt)
  step_s = float(np.mean(times))
  flops = train_flops(cfg, K) * batch
  return {**row, "step_s": step_s, "step_s_all": times, "samples_per_s": batch / step_s,
          "samples_per_s_best": batch / min(times),
          "gflop_per_step": flops / 1e9, "achieved_gflops": flops / step_s / 1e9,
          # The allocator's high-water mark since the process started (JAX cannot reset it), so
          # only the first row of a run is this configuration's own peak.
          "device_peak_bytes_so_far": _device_peak()}


def _print_table(args, rows, machine) -> None:
  MiB = 2**20
  print(f"training step, K={args.K} L={args.L} D={args.dim} depth={args.depth} "
        f"batch={args.batch} attention={args.attention} on {rows[0]['devices']} x "
        f"{machine['device']}")
  mem_head = f"{'temp MiB':>10}{'temp/sample':>12}{'args MiB':>10}"
  mem = lambda r: (f"{r['memory'].get('temp_size_in_bytes', 0) / MiB:>10.0f}"
                   f"{r['temp_bytes_per_sample'] / MiB:>12.1f}"
                   f"{r['memory'].get('argument_size_in_bytes', 0) / MiB:>10.0f}")
  if args.compile_only:
    print(f"{'dtype':<10}{'m':>4}{'compile s':>11}" + mem_head)
    for r in rows:
      print(f"{r['dtype']:<10}{r['microbatches']:>4}{r['compile_s']:>11.1f}" + mem(r))
    return
  # best: the fastest timed step, the figure least disturbed by other load on a shared machine.
  print(f"{'dtype':<10}{'m':>4}{'samples/s':>11}{'best':>8}{'step s':>9}{'compile s':>11}"
        f"{'GFLOP/s':>9}" + mem_head)
  for r in rows:
    print(f"{r['dtype']:<10}{r['microbatches']:>4}{r['samples_per_s']:>11.2f}"
          f"{r['samples_per_s_best']:>8.2f}{r['step_s']:>9.2f}{r['compile_s']:>11.1f}"
          f"{r['achieved_gflops']:>9.1f}" + mem(r))


def _int_list(text: str) -> list[int]:
  try:
    return [int(v) for v in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--K", type=int, default=512)
  p.add_argument("--L", type=int, default=512)
  p.add_argument("--dim", type=int, default=768)
  p.add_argument("--depth", type=int, default=2)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--steps", type=int, default=3, help="timed steps per dtype")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  p.add_argument("--samples", type=int, default=4096, help="random training images")
  p.add_argument("--descriptor-dim", type=int, default=2048, help="C of the descriptors")
  p.add_argument("--attention", default="auto",
                 help="ModelConfig.attention: auto, xla, chunked or cudnn ('auto' is the chunked "
                 "form on CPU, 'xla' on GPUs: pass xla to size the GPU program on a CPU)")
  p.add_argument("--microbatches", default=[1], type=_int_list,
                 help="train.microbatches values to compare, comma-separated (e.g. 1,2,4,8)")
  p.add_argument("--compile-only", action="store_true",
                 help="compile and report memory only; run no step")
  p.add_argument("--json", default=None, help="write the results here")
  args = p.parse_args(argv)
  mesh = parallel.make_mesh(jax.local_devices())
  try:  # every value before the first (slow) compilation
    for m in args.microbatches:
      train_step.check_microbatches(args.batch, m, mesh, source="--batch/--microbatches")
  except InputError as e:
    print(f"bench_train: {e}", file=sys.stderr)
    return 2
  rows = [bench(d, args.batch, args.K, args.L, args.dim, args.depth, args.heads, args.steps,
                args.warmup, args.samples, args.descriptor_dim, m, args.compile_only,
                args.attention)
          for d in args.dtypes.split(",") for m in args.microbatches]
  dev = jax.local_devices()[0]
  machine = {"platform": dev.platform, "device": getattr(dev, "device_kind", str(dev)),
             "processor": _cpu_name(), "cpus": os.cpu_count(), "jax": jax.__version__,
             "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
  _print_table(args, rows, machine)
  if args.json:
    from csa_jax.fileio import write_json
    write_json(args.json, {"machine": machine, "results": rows})
  return 0


if __name__ == "__main__":
  sys.exit(main())
