#!/usr/bin/env bash
# One GPU check in at most 8 minutes on one H200/H100, every result in one folder, merged into one
# JSON and one table at the end.
#
#   bash tools/gpu_check.sh                          # results in $OUT if set, else ./gpu_results
#   GPU_CHECK_SMALL=1 OUT=/tmp/r bash tools/gpu_check.sh   # every stage tiny, on CPU: a dry run
#                                                          # of the script and its report
#
# Stages, in this order; each runs under its own `timeout`, a failure or timeout is logged and the
# script goes on. A stage's budget is the smaller of its cap and what the overall deadline
# (TOTAL_BUDGET s, default 470) leaves after the nominal budgets of the stages still to come, so
# the time an early stage does not use goes to the bench:
#   parity   (PARITY_BUDGET 45 s) pytest of the GPU parity files with float32 matmuls; pytest
#            is stopped with SIGINT, so a cut run still prints its counts (pytest.log)
#   epoch    (EPOCH_BUDGET 120 s) tools/bench_epoch.py at full size: one rSfM120k-sized epoch
#            (91,642 samples, K=512, batch 256, the paper model) through `csa-jax train`
#            (bench_epoch.json, bench_epoch.log)
#   warm     (WARM_BUDGET 60 s) the same `csa-jax eval --model` (paper-size model, bf16, K=1024,
#            the demo's synthetic test set) run twice as two processes sharing a fresh compile
#            cache (CSA_JAX_CACHE_DIR): cold, then warm (warm/eval_cold.json, warm/eval_warm.json)
#   fidelity (FIDELITY_BUDGET 40 s nominal, up to FIDELITY_MAX 60 s) `csa-jax demo`: its model
#            trained, its test set re-ranked with the same weights in float32 and in bfloat16
#            (demo_results.json: csa, csa_bf16); then tools/bf16_fidelity.py at K=1024
#            (bf16_fidelity.json)
#   bench    (BENCH_BUDGET 195 s nominal, up to BENCH_MAX 300 s) `csa-jax bench`: re-rank
#            batches 1/8/64 at K=1024 in bf16, training batch 256 at K=512, attention xla,cudnn,
#            5 rounds, without the bench's own warm start (the warm stage's job; BENCH_WARM_START=1
#            keeps it) (bench_gpu.json, bench_gpu.txt, bench_gpu.stderr)
#   profile  (only with PROFILE_MIN 30 s left, up to PROFILE_BUDGET 60 s) one training step of
#            the paper model under jax.profiler: trace in trace/, top ops in profile.json
# then tools/gpu_report.py merges everything into gpu_check.json and gpu_check.md. Also written:
# stages.jsonl (one line per command: status, exit code, seconds, budget), gpu_check.log,
# nvidia-smi.txt, env.txt. Compiled programs are not cached across stages (CSA_JAX_CACHE_DIR=off
# except in the warm-start stage), so first-call times include compilation.
#
# What the GPU machine needs (nothing is downloaded when it is already there):
#   - Python >= 3.10 with: jax + a CUDA plugin (jax[cuda12] or jax-cuda13-plugin/pjrt, matching
#     the driver), flax, optax, orbax-checkpoint, numpy, ml_dtypes, ml_collections, matplotlib,
#     pytest, and torch built with CUDA. A CUDA image with PyTorch and JAX usually has all of them.
#   - csa_jax itself comes from this checkout (PYTHONPATH, or `pip install -e .` when allowed); a
#     checkout on PYTHONPATH lacks csa_jax.configs (pyproject maps configs/ there at install), so
#     the script then links one up in a scratch directory and runs the CLI from there.
#   - Offline machine missing a package: put wheels in ./.whl (pip download --only-binary) and
#     they are installed from there with --no-index; with network, pip fetches what is missing.
# Environment knobs: PYTHON (default python3), OUT, TOTAL_BUDGET, the *_BUDGET, *_MAX and
#   PROFILE_MIN values above, BENCH_ARGS (extra `csa-jax bench` flags, after the defaults, so they
#   win), BENCH_WARM_START=1, EPOCH_ARGS (extra bench_epoch.py flags, e.g. "--set
#   model.attention=cudnn"), KEEP_WORK=1 (keep the scratch directory), GPU_CHECK_SMALL=1.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/gpu_results}"
PY="${PYTHON:-python3}"
case "$PY" in  # a relative path (.venv/bin/python) must survive the stages' cd
  /*) ;;
  */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;;
esac
SMALL="${GPU_CHECK_SMALL:-0}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

TOTAL_BUDGET="${TOTAL_BUDGET:-470}"
PARITY_BUDGET="${PARITY_BUDGET:-45}"
EPOCH_BUDGET="${EPOCH_BUDGET:-120}"
WARM_BUDGET="${WARM_BUDGET:-60}"
FIDELITY_BUDGET="${FIDELITY_BUDGET:-40}"
FIDELITY_MAX="${FIDELITY_MAX:-60}"
BENCH_BUDGET="${BENCH_BUDGET:-195}"
BENCH_MAX="${BENCH_MAX:-300}"
PROFILE_BUDGET="${PROFILE_BUDGET:-60}"
PROFILE_MIN="${PROFILE_MIN:-30}"
RESERVE=5    # seconds kept for the report
MIN_STEP=8   # a command with less time than this left is skipped
DEADLINE=$((SECONDS + TOTAL_BUDGET))

# Results of an earlier run in $OUT must not be read as this run's.
rm -rf "$OUT/warm" "$OUT/trace"
rm -f "$OUT"/{gpu_check.log,gpu_check.json,gpu_check.md,stages.jsonl,pytest.log,bench_gpu.json} \
  "$OUT"/{bench_gpu.txt,bench_gpu.stderr,bench_epoch.json,bench_epoch.log,demo.log} \
  "$OUT"/{demo_results.json,bf16_fidelity.json,bf16_fidelity.log,profile.json,profile.log} \
  "$OUT"/{warm_prepare.log,env.txt,nvidia-smi.txt}
: >"$OUT/stages.jsonl"
log() { echo "[gpu_check $(date +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$OUT/gpu_check.log" >&2; }

STAGE=""; STAGE_END=0
# stage NAME CAP LATER: starts a stage whose budget is min(CAP, what the deadline leaves after
# LATER seconds of nominal budgets of the stages still to come); returns 1 when too little is left.
stage() {
  STAGE=$1
  local cap=$2 later=$3 left
  left=$((DEADLINE - RESERVE - SECONDS - later))
  STAGE_END=$((SECONDS + (cap < left ? cap : left)))
  if ((STAGE_END - SECONDS < MIN_STEP)); then
    log "$STAGE: skipped (${left} s left for it)"
    record "$STAGE" skipped 0 0 0 ""
    return 1
  fi
  log "=== $STAGE (budget $((STAGE_END - SECONDS)) s)"
}
record() {  # record STEP STATUS RC SECONDS BUDGET OUTPUT
  printf '{"stage": "%s", "step": "%s", "status": "%s", "rc": %s, "seconds": %s, ' \
    "$STAGE" "$1" "$2" "$3" "$4" >>"$OUT/stages.jsonl"
  printf '"budget": %s, "output": "%s"}\n' "$5" "$6" >>"$OUT/stages.jsonl"
}
# step NAME OUTFILE ERRFILE|- CMD...: CMD under `timeout` within the stage's budget; its stdout to
# OUTFILE, its stderr to ERRFILE (or to OUTFILE with -); one line in stages.jsonl. SIGNAL (default
# TERM) is what `timeout` sends first; KILL follows 5 s later. Returns CMD's exit code.
step() {
  local name=$1 out=$2 err=$3 budget rc t0 dt status
  shift 3
  budget=$((STAGE_END - SECONDS))
  ((budget > DEADLINE - RESERVE - SECONDS)) && budget=$((DEADLINE - RESERVE - SECONDS))
  if ((budget < MIN_STEP)); then
    log "$STAGE/$name: skipped (${budget} s left)"
    record "$name" skipped 0 0 "$budget" ""
    return 125
  fi
  log "$STAGE/$name (${budget} s): $*"
  t0=$(date +%s.%N)
  if [ "$err" = - ]; then
    timeout -s "${SIGNAL:-TERM}" -k 5 "$budget" "$@" >"$out" 2>&1
  else
    timeout -s "${SIGNAL:-TERM}" -k 5 "$budget" "$@" >"$out" 2>"$err"
  fi
  rc=$?
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  record "$name" "$status" "$rc" "$dt" "$budget" "${out#"$OUT"/}"
  log "$STAGE/$name: $status (exit $rc, $dt s)"
  return $rc
}

{ nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv; } >"$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed (no NVIDIA driver?)"

# --- dependencies: only what is missing, from ./.whl when offline ---------------------------
missing=$("$PY" - <<'EOF'
import importlib.util
mods = ["jax", "flax", "optax", "orbax.checkpoint", "numpy", "ml_dtypes", "ml_collections",
        "matplotlib", "pytest", "torch"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  log "missing python modules: $missing"
  if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site "$REPO"/.whl/*.whl \
      && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    "$PY" -m pip install -q -e "$REPO[torch,test]" || log "pip install of the extras failed"
  fi
fi
if [ "$SMALL" = 1 ]; then
  export JAX_PLATFORMS=cpu
  TEST_PLATFORMS=cpu
  log "GPU_CHECK_SMALL=1: every stage tiny, on CPU"
else
  TEST_PLATFORMS=cuda,cpu
  if ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    log "jax sees no GPU; trying to add a CUDA build of jax (needs network)"
    "$PY" -m pip install -q "jax[cuda12]" || log "could not install jax[cuda12]"
  fi
fi
if [ -n "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  log "unsetting JAX_COMPILATION_CACHE_DIR=$JAX_COMPILATION_CACHE_DIR (it overrides the stages'" \
    "own caches)"
  unset JAX_COMPILATION_CACHE_DIR
fi
export CSA_JAX_CACHE_DIR=off  # every first call compiles; the warm-start stage sets its own
# A checkout on PYTHONPATH has no csa_jax.configs (the wheel maps configs/ there): a package of
# links to the checkout's modules plus configs/, first on the path. CLI commands then run from
# $WORK, since `python -m` puts the current directory (the checkout's csa_jax) first.
if ! (cd "$WORK" && "$PY" -c "import csa_jax.configs" 2>/dev/null); then
  mkdir -p "$WORK/pkg/csa_jax"
  for e in "$REPO"/csa_jax/*; do ln -s "$e" "$WORK/pkg/csa_jax/"; done
  ln -s "$REPO/configs" "$WORK/pkg/csa_jax/configs"
  export PYTHONPATH="$WORK/pkg:$PYTHONPATH"
  log "csa_jax.configs not importable from the checkout: linked it up in $WORK/pkg"
fi
"$PY" - >"$OUT/env.txt" 2>&1 <<'EOF'
import importlib.metadata as md, platform, jax
print(platform.platform(), platform.python_version())
print("jax backend:", jax.default_backend(), jax.devices())
for p in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "triton"):
  try:
    print(p, md.version(p))
  except md.PackageNotFoundError:
    print(p, "not installed")
import torch
print("torch cuda:", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
EOF
cat "$OUT/env.txt" >&2
CLI=("$PY" -m csa_jax.cli.main)

# --- 1. parity tests on the GPU (float32 matmuls, not TF32, so 1e-5 tolerances hold) --------
# The parity files only (model, re-ranking, interop against the original's fixture and PyTorch);
# the bench checks parity again at the paper size before it times anything.
if [ "$SMALL" = 1 ]; then
  PARITY_FILES=(tests/core/test_forward.py)
else
  PARITY_FILES=(tests/core/test_model.py tests/core/test_attention.py tests/core/test_forward.py
                tests/interop/test_state_dict.py tests/interop/test_torch_reference.py)
fi
LATER=$((EPOCH_BUDGET + WARM_BUDGET + FIDELITY_BUDGET + BENCH_BUDGET))
if stage parity "$PARITY_BUDGET" "$LATER"; then
  SIGNAL=INT step pytest "$OUT/pytest.log" - env JAX_PLATFORMS="$TEST_PLATFORMS" \
    JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q -p no:cacheprovider -rfE \
    "${PARITY_FILES[@]}"
  log "pytest: $(tail -n 1 "$OUT/pytest.log")"
fi
# Everything else runs from the scratch directory (see the configs link-up above); every path
# below is absolute.
cd "$WORK" || exit 1

# --- 2. one training epoch end to end through `csa-jax train` --------------------------------
if stage epoch "$EPOCH_BUDGET" $((WARM_BUDGET + FIDELITY_BUDGET + BENCH_BUDGET)); then
  EPOCH_SIZE=()
  [ "$SMALL" = 1 ] && EPOCH_SIZE=(--tiny)
  # The tool stops `csa-jax train` itself 15 s before the stage's end, so its JSON is written.
  inner=$((STAGE_END - SECONDS - 15))
  step bench_epoch "$OUT/bench_epoch.log" - "$PY" "$REPO/tools/bench_epoch.py" \
    --out "$OUT/bench_epoch.json" --dir "$WORK" --timeout $((inner > 5 ? inner : 5)) \
    "${EPOCH_SIZE[@]}" ${EPOCH_ARGS:-}
  tail -n 1 "$OUT/bench_epoch.log" >&2
fi

# --- 3. warm start: the same eval twice, two processes, one fresh compile cache ---------------
if stage warm "$WARM_BUDGET" $((FIDELITY_BUDGET + BENCH_BUDGET)); then
  mkdir -p "$OUT/warm" "$WORK/warm"
  # The demo's synthetic test set (2,720 db images, 70 queries) and a paper-size model (L=512,
  # D=768, depth 2, 12 heads, bfloat16) with fresh weights: compiling its re-ranking is the cost
  # a warm start saves. Prepared on the CPU, so the GPU sees only the two timed processes.
  if step prepare "$OUT/warm_prepare.log" - env JAX_PLATFORMS=cpu WARM_DIR="$WORK/warm" \
      GPU_CHECK_SMALL="$SMALL" "$PY" - <<'EOF'
import os
import jax
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import init_params
from csa_jax.data import synthetic
from csa_jax.experiments import demo
from csa_jax.interop.export import save_export

w, small = os.environ["WARM_DIR"], os.environ["GPU_CHECK_SMALL"] == "1"
if small:  # the tiny benchmark and configs/tiny.py's model shape
  bench = demo.SIZES["tiny"][0]
  cfg = ModelConfig(anchors=8, dim=16, depth=1, heads=2, mlp_ratio=2, dtype="float32")
else:  # the demo's benchmark and the paper model
  bench, cfg = synthetic.SynthConfig(), ModelConfig(dtype="bfloat16")
paths = synthetic.write_benchmark(os.path.join(w, "data"), bench)
save_export(os.path.join(w, "model.npz"), init_params(cfg, jax.random.key(0)), cfg)
print("warm-start inputs:", paths, cfg)
EOF
  then
    WARM_K=1024
    WARM_ENV=(CSA_JAX_CACHE_DIR="$WORK/warm/xla")
    if [ "$SMALL" = 1 ]; then
      WARM_K=16
      WARM_ENV+=(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0)  # tiny programs compile fast
    fi
    rm -rf "$WORK/warm/xla"
    for run in cold warm; do
      step "$run" "$OUT/warm/eval_$run.log" - env "${WARM_ENV[@]}" "${CLI[@]}" eval \
        --features "$WORK/warm/data/test/synth5k/synth-gem.npz" \
        --gnd "$WORK/warm/data/annotations/synth5k/gnd_synth5k.json" \
        --model "$WORK/warm/model.npz" --K "$WARM_K" --out "$OUT/warm/eval_$run.json"
      find "$WORK/warm/xla" -type f 2>/dev/null | wc -l >"$OUT/warm/cache_files_after_$run.txt"
    done
  fi
fi

# --- 4. bf16 fidelity: revisited mAP of bf16 against float32 re-ranking, same weights ---------
# `csa-jax demo` trains its small model (float32) on the synthetic benchmark and re-ranks the test
# set in float32 and in bfloat16 (results.json: csa, csa_bf16); then, with the stage's time left,
# tools/bf16_fidelity.py re-ranks the same test set at the paper's test-time K=1024 in both.
if stage fidelity "$FIDELITY_MAX" "$BENCH_BUDGET"; then
  DEMO_SIZE=()
  FID_KS=1024
  if [ "$SMALL" = 1 ]; then
    DEMO_SIZE=(--size tiny)
    FID_KS=16
  fi
  if step demo "$OUT/demo.log" - "${CLI[@]}" demo --out "$WORK/demo" "${DEMO_SIZE[@]}"; then
    cp "$WORK/demo/results.json" "$OUT/demo_results.json"
    step bf16_fidelity "$OUT/bf16_fidelity.log" - "$PY" "$REPO/tools/bf16_fidelity.py" \
      --demo "$WORK/demo" --ks "$FID_KS" --out "$OUT/bf16_fidelity.json"
  fi
fi

# --- 5. the benchmark: paper model, K=1024 batches 1/8/64, training K=512 at 256, XLA's and
# cuDNN's attention side by side (csa_jax[xla], csa_jax[cudnn]) -----------------------------
if [ "$SMALL" = 1 ]; then
  BENCH_SIZE=(--anchors 16 --dim 32 --depth 1 --heads 2 --k 64 --db 256 --descriptor-dim 64
              --batches 1,2 --train-k 32 --train-batch 4 --repeats 2 --attention xla,chunked
              --dtype float32 --no-compile --matmul-size 256)
else
  BENCH_SIZE=(--k 1024 --batches 1,8,64 --dtype bfloat16 --train-k 512 --train-batch 256
              --attention xla,cudnn --repeats 5)
fi
# The bench's own warm start (two more processes) is the warm stage's job here; BENCH_WARM_START=1
# keeps it.
if [ "${BENCH_WARM_START:-0}" != 1 ] \
    && grep -q -- "--no-warm-start" "$REPO/csa_jax/cli/bench.py"; then
  BENCH_SIZE+=(--no-warm-start)
fi
if stage bench "$BENCH_MAX" 0; then
  step bench "$OUT/bench_gpu.txt" "$OUT/bench_gpu.stderr" "${CLI[@]}" bench \
    --out "$OUT/bench_gpu.json" "${BENCH_SIZE[@]}" ${BENCH_ARGS:-}
  cat "$OUT/bench_gpu.txt" >&2
fi
nvidia-smi --query-gpu=name,memory.used,memory.total,temperature.gpu,clocks.sm \
  --format=csv >>"$OUT/nvidia-smi.txt" 2>&1

# --- 6. profile of one training step (only with time left) -----------------------------------
if ((DEADLINE - RESERVE - SECONDS < PROFILE_MIN)); then
  STAGE=profile
  log "profile: skipped ($((DEADLINE - RESERVE - SECONDS)) s left, PROFILE_MIN=$PROFILE_MIN)"
  record "" skipped 0 0 0 ""
elif stage profile "$PROFILE_BUDGET" 0; then
  step trace "$OUT/profile.log" - env PROFILE_OUT="$OUT" GPU_CHECK_SMALL="$SMALL" "$PY" - <<'EOF'
import collections
import glob
import gzip
import json
import os
import time

import jax
import numpy as np

from csa_jax import parallel, profiling
from csa_jax.core.config import ModelConfig
from csa_jax.train import optim
from csa_jax.train import step as train_step
from csa_jax.train.train_set import random_train_set

out, small = os.environ["PROFILE_OUT"], os.environ["GPU_CHECK_SMALL"] == "1"
if small:
  cfg, K, B, C, N = ModelConfig(anchors=8, dim=16, depth=1, heads=2, mlp_ratio=2), 8, 16, 32, 256
else:  # the paper model and batch, as csa-jax train runs it
  cfg, K, B, C, N = ModelConfig(dtype="bfloat16"), 512, 256, 2048, 4096
mesh = parallel.make_mesh(jax.local_devices())
tx = optim.make_optimizer(base_lr=0.025, warmup_lr=0.00025, final_lr=0.0, warmup_steps=100,
                          total_steps=1000)
data = random_train_set(N, max(1, N // 20), C, max(K, cfg.anchors), seed=0)
arrays = parallel.put_replicated((data.feats_NxC, data.nbrs_NxM, data.clusters_N), mesh)
state = train_step.init_state(cfg, tx, jax.random.key(0), mesh)
fn = train_step.make_train_step(cfg, tx, mesh, 0.2, K, cfg.anchors)


def idx(i):
  return train_step.global_batch_array(np.arange(i * B, (i + 1) * B) % N, mesh, B)


t0 = time.perf_counter()
state, m = fn(state, arrays, idx(0), jax.random.key(1))
jax.block_until_ready(m)
res = {"model": cfg.__dict__, "K": K, "batch": B, "first_step_s": time.perf_counter() - t0}
state, m = fn(state, arrays, idx(1), jax.random.key(2))
jax.block_until_ready(m)
trace_dir = os.path.join(out, "trace")
# csa_jax's trace: JAX's Python tracer off (it slows a traced step about 5x), Perfetto file too.
with profiling.trace(trace_dir, "profile"):
  t0 = time.perf_counter()
  state, m = fn(state, arrays, idx(2), jax.random.key(3))
  jax.block_until_ready(m)
  res["traced_step_s"] = time.perf_counter() - t0
# Top operations by total time: a device's kernels where the trace has a device, else the host's
# (python frames left out).
files = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
if files:
  with gzip.open(files[-1]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  procs = {e["pid"]: e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  dev = {p for p, n in procs.items() if "/device:" in n}
  total = collections.Counter()
  count = collections.Counter()
  for e in events:
    if e.get("ph") != "X" or (dev and e.get("pid") not in dev):
      continue
    if not dev and str(e.get("name", "")).startswith("$"):
      continue
    total[e["name"]] += e.get("dur", 0)
    count[e["name"]] += 1
  res["trace_file"] = os.path.relpath(files[-1], out)
  res["where"] = sorted(procs[p] for p in dev) or ["host"]
  res["busy_ms"] = sum(total.values()) / 1e3
  res["top_ops"] = [{"name": n[:120], "ms": t / 1e3, "calls": count[n]}
                    for n, t in total.most_common(15)]
with open(os.path.join(out, "profile.json"), "w") as f:
  json.dump(res, f, indent=1)
print(json.dumps({k: v for k, v in res.items() if k != "top_ops"}))
EOF
fi

# --- the report: one JSON, one table ---------------------------------------------------------
log "report"
timeout -k 5 30 "$PY" "$REPO/tools/gpu_report.py" --out "$OUT" --total-s "$SECONDS" \
  --budget-s "$TOTAL_BUDGET" || log "gpu_report.py failed"
[ -f "$OUT/gpu_check.md" ] && cat "$OUT/gpu_check.md"
log "done in $SECONDS s; results in $OUT"
