"""The warm start of ``csa-jax bench``: a second process's first call, with the compilation cache.

A re-ranking command (``csa-jax eval --model``, ``csa-jax rerank``) pays its compilation on its
first batch. The CLI keeps compiled programs in XLA's persistent cache (``compile_cache``), so the
next process running the same program loads it instead. This module measures exactly that: two
fresh Python processes, one after the other, each building the same model and batch and timing
its first re-ranking call (affinity + model, as the ``csa_jax`` contestant) with the cache in a
new temporary directory. The first process finds the cache empty (cold: compiles and writes it),
the second finds it filled (warm: traces, looks the programs up and loads them). Timing the calls
inside each process leaves out Python's and JAX's start-up, the same for both.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

log = logging.getLogger(__name__)

TIMEOUT_S = 600  # one process; the paper model compiles in seconds to a minute


@dataclasses.dataclass(frozen=True)
class Spec:
  """What each of the two processes builds and re-ranks.

  Attributes:
    model: ``ModelConfig`` fields (dtype and attention included).
    k: candidates re-ranked per query.
    batch: queries (re-ranking) or samples (training) in the timed call.
    descriptor_dim: C.
    db: database size.
    seed: weights and data.
    part: "rerank" (one re-ranking batch, as ``eval --model`` / ``rerank``) or "train" (one
      training step, as ``train --resume``; ``k`` tokens per sample).
  """

  model: dict
  k: int
  batch: int
  descriptor_dim: int
  db: int
  seed: int = 0
  part: str = "rerank"


def first_call(spec: Spec) -> dict:
  """Builds the model and one batch, then times the first call (re-ranking or a training step) and
  a second one.

  Runs in the child process, with the compilation cache already pointed where the parent wants.

  Args:
    spec: what to build.

  Returns:
    {'first_call_s', 'second_call_s'}.
  """
  # pylint: disable=g-import-not-at-top
  import jax

  from csa_jax.bench import arena
  from csa_jax.bench import contestants as ct
  from csa_jax.core.config import ModelConfig
  from csa_jax.core.forward import init_params
  cfg = ModelConfig(**spec.model)
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(spec.seed))
  db = arena.random_database(spec.db, spec.descriptor_dim, spec.seed)
  if spec.part == "train":
    aff, targets = arena.TrainingData(db, cfg.anchors, spec.k, spec.seed).batch(spec.batch)
    run = ct.jax_train_fn(params, cfg, aff, targets, arena.LR, arena.ALPHA, spec.seed)
    jax.block_until_ready((aff, targets))
  else:
    q, top = arena.queries(db, spec.batch, max(spec.k, cfg.anchors - 1), spec.seed + 2)
    run = ct.jax_rerank_fn(params, cfg, jax.numpy.asarray(q), jax.numpy.asarray(db),
                           jax.numpy.asarray(top), spec.k)
  jax.block_until_ready(params)
  t0 = time.perf_counter()
  run()
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  run()
  return {"first_call_s": first, "second_call_s": time.perf_counter() - t0}


def _child(spec_json: str, out_path: str) -> None:
  """The child process's entry: the cache as the CLI sets it, then ``first_call``."""
  from csa_jax import compile_cache  # pylint: disable=g-import-not-at-top
  compile_cache.enable(compile_cache.default_dir())
  res = first_call(Spec(**json.loads(spec_json)))
  with open(out_path, "w") as f:
    json.dump(res, f)


def _run_child(spec: Spec, cache_dir: str, out_path: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["CSA_JAX_CACHE_DIR"] = cache_dir
  code = ("import sys; from csa_jax.bench import warm_start; "
          "warm_start._child(sys.argv[1], sys.argv[2])")
  t0 = time.perf_counter()
  p = subprocess.run([sys.executable, "-c", code, json.dumps(dataclasses.asdict(spec)), out_path],
                     env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  wall = time.perf_counter() - t0
  if p.returncode != 0:
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"warm-start process exited {p.returncode}: {tail[:300]}")
  with open(out_path) as f:
    return {**json.load(f), "process_s": wall}


def measure(spec: Spec) -> dict:
  """The cold and the warm first call, each in a fresh process sharing one new cache directory.

  Args:
    spec: the model and batch (the benchmark's ``csa_jax`` contestant at one batch size).

  Returns:
    {'cold': {...}, 'warm': {...}} (each ``first_call``'s fields plus 'process_s', the whole
    process), 'warm_over_cold' (warm first call / cold first call), 'cache_files_after_cold'
    and 'cache_files_after_warm' (the programs in the cache after each), 'overhead_ratio' (what
    the first call costs beyond a steady one, warm over cold: the start-up the cache saves,
    without the work itself, which dominates a CPU re-ranking call), or {'error': one line}
    when a process failed.
  """
  tmp = tempfile.mkdtemp(prefix="csa_jax_warm_start_")
  try:
    cache = os.path.join(tmp, "xla")
    out = {}
    for name in ("cold", "warm"):
      log.info("warm start: %s process", name)
      out[name] = _run_child(spec, cache, os.path.join(tmp, f"{name}.json"))
      # A warm process that compiled nothing new adds no file: every program came from the cache.
      out[f"cache_files_after_{name}"] = len(os.listdir(cache)) if os.path.isdir(cache) else 0
    out["warm_over_cold"] = out["warm"]["first_call_s"] / out["cold"]["first_call_s"]
    extra = {n: max(out[n]["first_call_s"] - out[n]["second_call_s"], 0.0) for n in out
             if n in ("cold", "warm")}
    out["overhead_ratio"] = extra["warm"] / extra["cold"] if extra["cold"] > 0 else None
    return out
  except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
    log.warning("warm start: %s", e)
    return {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
