"""The demo: the synthetic landmark benchmark end to end, in minutes on a CPU.

1. ``synthetic.write_benchmark`` writes <out>/data in the real layout (docs/method.md section 6,
   .npz/.json);
2. ``train_set.load_train_set`` reads it back through the same readers as real data, with the
   neighbour cache;
3. ``train.loop.train`` trains a small CSA with the paper's recipe (SGD, warm-up + cosine);
4. ``evaluation.evaluate`` runs the first-round search (plain cosine on the same descriptors),
   CSA's re-ranking of the top-K from affinities only, and the exact revisited mAP of both.

``csa-jax demo`` prints the table; ``csa-jax experiment`` reuses the benchmark sizes and recipe.
The tiny size (tests, seconds) is the tiny synthetic benchmark below with configs/tiny.py's model
and schedule (``configs.tiny_overrides``); the default size is what the README's table shows.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import ml_collections

from csa_jax import configs
from csa_jax.data import ground_truth, synthetic
from csa_jax.errors import fail
from csa_jax.evaluation.evaluate import evaluate, mean_ap_table
from csa_jax.fileio import check_output_path, write_json
from csa_jax.run_info import run_info
from csa_jax.train import train_set as pipeline

log = logging.getLogger(__name__)

_TRAIN_KEYS = ("epochs", "warmup_epochs", "global_batch", "base_lr")
MARKER = ".csa-jax-demo"  # <out> is the demo's own: a re-run replaces what the last one wrote
RERANK_BATCH = 16  # queries per re-ranking call

# name -> (benchmark, ``demo_config`` overrides, test-time K)
SIZES = {
    "default": (synthetic.SynthConfig(), {}, 128),
    # Seconds, for tests: says nothing about quality. The one tiny synthetic benchmark (also
    # ``csa-jax experiment --size tiny``'s); model and schedule are configs/tiny.py's.
    "tiny": (synthetic.SynthConfig(dim=16, parts=4, styles=2, train_landmarks=6, train_photos=8,
                                   train_singles=30, val_landmarks=1, val_singles=5,
                                   test_landmarks=3, test_photos=8, queries_per_landmark=2,
                                   test_minor=2, test_singles=40),
             {dotted.split(".")[1]: v for dotted, v in configs.tiny_overrides().items()},
             16),
}


def demo_config(root: str, seed: int = 0, cache_dir: str | None = None,
                **overrides) -> ml_collections.ConfigDict:
  """``configs/synthetic.py`` reading the benchmark under ``root``: the one demo recipe.

  Args:
    root: where ``synthetic.write_benchmark`` wrote the data.
    seed: training seed.
    cache_dir: the neighbour cache (default ``<root>/neighbors``).
    **overrides: model, ``K``, ``epochs``, ``warmup_epochs``, ``global_batch`` or ``base_lr``
      values (``SIZES``).

  Returns:
    The locked training config.
  """
  c = configs.load_file("synthetic")
  c.data.root = root
  c.data.cache_dir = cache_dir or os.path.join(root, "neighbors")
  c.train.seed = seed
  c.checkpoint.every_steps, c.checkpoint.keep = 10 ** 9, 1  # the demo never resumes
  c.log.every_steps = 20
  c.eval.every_epochs = 0  # the demo evaluates once, after training
  for key, value in overrides.items():
    group = "data" if key == "K" else "train" if key in _TRAIN_KEYS else "model"
    c[group][key] = value
  c.lock()
  return c


def _prepare_out(out: str) -> None:
  """Claims ``out`` for the demo (refusing a directory that holds anything else)."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise fail(out, "--out", "a new or empty directory", "a file")
  check_output_path(os.path.join(out, MARKER), "--out")
  if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, MARKER)):
    raise fail(out, "--out", "a new or empty directory (or one a previous demo wrote)",
               f"a directory holding {len(os.listdir(out))} other entries")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, MARKER), "w") as f:
    f.write("written by csa-jax demo; its data/, train/ and results.json are replaced on each "
            "run (neighbors/ is a cache, reused while valid)\n")
  for sub in ("data", "train"):
    shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
  if os.path.exists(os.path.join(out, "results.json")):
    os.remove(os.path.join(out, "results.json"))


def evaluate_test_set(params, model_cfg, test_features: str, gnd_path: str, K: int,
                      bfloat16: bool = True) -> dict:
  """The demo's table: first round and CSA's re-ranking of the top-K on one test set.

  Args:
    params: trained parameters.
    model_cfg: their ``ModelConfig``.
    test_features: the test set's descriptors file ('db' and 'query').
    gnd_path: its ground truth.
    K: candidates re-ranked per query (at most the database size).
    bfloat16: also re-rank with bfloat16 matmuls (the accelerators' default in ``csa-jax
      bench``), to show what that precision costs in mAP.

  Returns:
    {'first_round'|'csa' [|'csa_bf16']: {'easy', 'medium', 'hard'}}: exact mAP in percent, two
    decimals; 'csa' is float32.
  """
  q_QxC, db_NxC, gnd = ground_truth.load_test_set(test_features, gnd_path)
  k = min(K, len(db_NxC))
  f32 = model_cfg.replace(dtype="float32")
  table = mean_ap_table(evaluate(q_QxC, db_NxC, gnd, model=(params, f32), K=k,
                                 batch_size=RERANK_BATCH))
  if bfloat16:
    res = evaluate(q_QxC, db_NxC, gnd, model=(params, f32.replace(dtype="bfloat16")), K=k,
                   batch_size=RERANK_BATCH)
    table["csa_bf16"] = mean_ap_table(res)["csa"]
  return table


def run(out: str, size: str = "default", seed: int = 0, progress: bool = True,
        command_argv: list[str] | None = None) -> dict:
  """The whole demo: benchmark, training, evaluation.

  Args:
    out: the demo's directory (new, empty, or one a previous demo wrote).
    size: a ``SIZES`` key.
    seed: benchmark and training seed.
    progress: the training progress bar.
    command_argv: the command line that asked for it, recorded in results.json.

  Returns:
    ``evaluate_test_set``'s table; ``<out>/results.json`` holds it plus a ``run`` record
    (versions, devices, command, seed, config: ``csa_jax.run_info``).
  """
  from csa_jax.train import loop  # noqa: PLC0415  (heavy; only when training)
  benchmark, overrides, test_k = SIZES[size]
  t0 = time.time()
  _prepare_out(out)
  root = os.path.join(out, "data")
  paths = synthetic.write_benchmark(root, benchmark.replace(seed=seed))
  log.info("demo: benchmark written to %s (%.0f s)", root, time.time() - t0)
  config = demo_config(root, seed=seed, cache_dir=os.path.join(out, "neighbors"), **overrides)
  train_data = pipeline.load_train_set([paths["train_features"]], paths["annotations"],
                                       K=config.data.K, L=config.model.anchors,
                                       cache_dir=config.data.cache_dir)
  result = loop.train(config, os.path.join(out, "train"), train_set=train_data,
                      progress=progress)
  log.info("demo: trained %d steps (%.0f s)", result.step, time.time() - t0)
  results = evaluate_test_set(result.params, result.model_cfg, paths["test_features"],
                              paths["gnd"], test_k)
  run = run_info(command_argv, config={"size": size, "test_K": test_k,
                                        "train": configs.as_plain(config)}, seed=seed)
  write_json(os.path.join(out, "results.json"), {**results, "run": run})
  return results
