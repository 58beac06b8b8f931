"""``csa-jax demo [--out DIR]``: the synthetic landmark benchmark end to end, in minutes on a CPU.

1. ``synthetic.write_benchmark`` writes DIR/data in the real layout (docs/method.md section 6, .npz/.json);
2. ``pipeline.load_train_set`` reads it back through the same readers as real data, with the
   neighbour cache;
3. ``train.train`` trains a small CSA with the paper's recipe (SGD, warm-up + cosine);
4. first-round search (``search.top_k_search``, plain cosine on the same descriptors), CSA
   re-ranking of the top-K from affinities only (``reranking.csa_rerank``), and the revisited
   mAP of both (``evaluate``); the table goes to stdout and DIR/results.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import jax
import ml_collections

from csa_jax import configs
from csa_jax.data import readers as data_io
from csa_jax.evaluation import revisited as evaluate
from csa_jax.data import train_set as pipeline
from csa_jax.data import synthetic
from csa_jax.errors import fail
from csa_jax.fileio import check_output_path, write_json
from csa_jax.retrieval.rerank import csa_rerank
from csa_jax.retrieval.search import top_k_search

_TRAIN_KEYS = ("epochs", "global_batch", "base_lr")
MARKER = ".csa-jax-demo"  # DIR is the demo's own: a re-run replaces what the last one wrote

# name -> (benchmark, model/training overrides, test-time K)
SIZES = {
    "default": (synthetic.SynthConfig(), {}, 128),
    # Seconds, for tests: says nothing about quality.
    "tiny": (synthetic.SynthConfig(dim=16, parts=4, styles=2, train_landmarks=6, train_photos=8,
                                   train_singles=30, val_landmarks=1, val_singles=5,
                                   test_landmarks=3, test_photos=8, queries_per_landmark=2,
                                   test_minor=2, test_singles=40),
             {"K": 16, "anchors": 16, "dim": 16, "heads": 2, "depth": 1, "epochs": 1,
              "global_batch": 16},
             24),
}


def demo_config(root: str, seed: int = 0, cache_dir: str | None = None,
                **overrides) -> ml_collections.ConfigDict:
  """``configs/synthetic.py`` reading the benchmark under ``root``: the one demo recipe.

  Args:
    root: where ``synthetic.write_benchmark`` wrote the data.
    seed: training seed.
    cache_dir: the neighbour cache (default ``<root>/neighbors``).
    **overrides: model, ``K``, ``epochs``, ``global_batch`` or ``base_lr`` values (``SIZES``).

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


def evaluate_both(params, model_cfg, test_features: str, gnd_path: str, K: int) -> dict:
  """{'first_round'|'csa': {'easy','medium','hard'}} mAP in percent."""
  q, db, gnd = data_io.load_test_set(test_features, gnd_path)
  K = min(K, len(db))
  _, top = top_k_search(q, db, max(K, model_cfg.anchors - 1))
  scores = q @ db.T  # (Q, N) is small here; the exact evaluator ranks the rest by score
  reranked = csa_rerank(params, model_cfg, q, db, top, K, model_cfg.anchors, batch_size=16)
  reranked = reranked[:, :K]
  res = {"first_round": evaluate.revisited_map_from_scores(scores, gnd),
         "csa": evaluate.revisited_map_from_scores(scores, gnd, top_QxK=reranked)}
  return {k: {p: round(float(r[p]["map"]) * 100, 2) for p in evaluate.PROTOCOLS}
          for k, r in res.items()}


def format_table(results: dict, K: int) -> str:
  lines = [f"{'mAP (%)':<22}{'Easy':>8}{'Medium':>8}{'Hard':>8}"]
  for key, name in (("first_round", "first round (cosine)"), ("csa", f"CSA re-rank (K={K})")):
    r = results[key]
    lines.append(f"{name:<22}" + "".join(f"{r[p]:>8.2f}" for p in evaluate.PROTOCOLS))
  d = {p: results["csa"][p] - results["first_round"][p] for p in evaluate.PROTOCOLS}
  lines.append(f"{'CSA - first round':<22}" + "".join(f"{d[p]:>+8.2f}"
                                                    for p in evaluate.PROTOCOLS))
  return "\n".join(lines)


def run(out: str, size: str = "default", seed: int = 0, progress: bool = True) -> dict:
  """The whole demo; returns what it writes to ``out``/results.json."""
  from csa_jax.train import loop as train  # noqa: PLC0415  (heavy; only when training)
  bench, overrides, test_k = SIZES[size]
  t0 = time.time()
  _prepare_out(out)
  root = os.path.join(out, "data")
  paths = synthetic.write_benchmark(root, bench.replace(seed=seed))
  data_io.say(f"demo: benchmark written to {root} ({time.time() - t0:.0f} s)")
  config = demo_config(root, seed=seed, cache_dir=os.path.join(out, "neighbors"), **overrides)
  ts = pipeline.load_train_set([paths["train_features"]], paths["annotations"],
                               K=config.data.K, L=config.model.anchors,
                               cache_dir=config.data.cache_dir)
  result = train.train(config, os.path.join(out, "train"), train_set=ts, progress=progress)
  data_io.say(f"demo: trained {result.step} steps ({time.time() - t0:.0f} s)")
  results = evaluate_both(result.params, result.model_cfg, paths["test_features"], paths["gnd"],
                          test_k)
  write_json(os.path.join(out, "results.json"), results)
  print(f"synthetic landmark benchmark ({synthetic.DATASET}, seed {seed}): "
        f"{time.time() - t0:.0f} s on {jax.devices()[0].platform}")
  print(format_table(results, test_k))
  return results


def main(argv: list[str]) -> int:
  ap = argparse.ArgumentParser(prog="csa-jax demo", description=__doc__.split("\n")[0])
  ap.add_argument("--out", default="csa_demo", help="output directory (default: ./csa_demo)")
  ap.add_argument("--size", choices=sorted(SIZES), default="default",
                  help="'tiny' runs in seconds and shows nothing; 'default' is the real demo")
  ap.add_argument("--seed", type=int, default=0, help="benchmark and training seed")
  args = ap.parse_args(argv)
  run(args.out, args.size, args.seed)
  return 0
