#!/usr/bin/env bash
# One short GPU check: parity tests, then `csa-jax bench` (bf16 csa_jax vs PyTorch fp16 autocast,
# eager and torch.compile), all results in one folder. Budget: under 5 minutes on one H100/H200.
#
#   bash tools/gpu_check.sh            # results in $OUT if set, else ./gpu_results
#
# What the GPU machine needs (nothing is downloaded when it is already there):
#   - Python >= 3.10 with: jax + a CUDA plugin (jax[cuda12] or jax-cuda13-plugin/pjrt, matching
#     the driver), flax, optax, orbax-checkpoint, numpy, ml_dtypes, matplotlib, pytest, and torch
#     built with CUDA. A CUDA image with PyTorch and JAX usually has all of them.
#   - csa_jax itself comes from this checkout (PYTHONPATH, or `pip install -e .` when allowed).
#   - Offline machine missing a package: put wheels in ./.whl (pip download --only-binary) and
#     they are installed from there with --no-index; with network, pip fetches what is missing.
# Environment knobs: PYTHON (default python3), BENCH_ARGS (extra `csa-jax bench` flags),
#   BENCH_TIMEOUT (seconds, default 190), TEST_TIMEOUT (default 80).
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/gpu_results}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log" >&2; }

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
if ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  log "jax sees no GPU; trying to add a CUDA build of jax (needs network)"
  "$PY" -m pip install -q "jax[cuda12]" || log "could not install jax[cuda12]"
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

# --- 1. parity tests on the GPU (float32 matmuls, not TF32, so 1e-5 tolerances hold) --------
log "parity tests"
# The parity tests only (model, re-ranking, interop against the original's fixture and PyTorch);
# the bench checks parity again at the paper size before it times anything.
JAX_PLATFORMS=cuda,cpu JAX_DEFAULT_MATMUL_PRECISION=highest timeout "${TEST_TIMEOUT:-80}" \
  "$PY" -m pytest -q -p no:cacheprovider tests/core/test_model.py tests/core/test_attention.py \
  tests/core/test_forward.py \
  tests/interop/test_state_dict.py tests/interop/test_torch_reference.py \
  >"$OUT/pytest.log" 2>&1
log "pytest exit $? ($(tail -n 1 "$OUT/pytest.log"))"

# --- 2. the benchmark: paper model, K=1024 batches 1/64, training K=512 at <= 256, XLA's and
# cuDNN's attention side by side (csa_jax[xla], csa_jax[cudnn]) -----------------------------
log "bench"
timeout "${BENCH_TIMEOUT:-190}" "$PY" -m csa_jax.cli.main bench --out "$OUT/bench_gpu.json" \
  ${BENCH_ARGS:---repeats 3 --batches 1,64 --attention xla,cudnn} >"$OUT/bench_gpu.txt" 2>"$OUT/bench_gpu.stderr"
rc=$?
log "bench exit $rc"
cat "$OUT/bench_gpu.txt"
nvidia-smi --query-gpu=name,memory.used,memory.total,temperature.gpu,clocks.sm \
  --format=csv >>"$OUT/nvidia-smi.txt" 2>&1
exit $rc
