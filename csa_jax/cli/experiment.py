"""``csa-jax experiment NAME``: the paper's studies and the classic re-ranking baselines.

  csa-jax experiment baselines                 # README table on the synthetic benchmark
  csa-jax experiment ablation --axes depth,mse # supplement Figure 1 (two of its four axes)
  csa-jax experiment seeds --seeds 5
  csa-jax experiment cross-feature
  csa-jax experiment kl-sweep
  csa-jax experiment heldout-val
  csa-jax experiment baselines --data /data/csa --features gl18-tl-resnet101-gem-w \\
      --datasets roxford5k,rparis6k --config configs/rsfm120k.py --model runs/rsfm120k

Each writes ``<out>/<NAME>.json`` and ``<out>/<NAME>.png``; every mAP in them is exact over the
whole database (``csa_jax.evaluation.evaluate``), in percent with two decimals. By default the
data is the built-in synthetic benchmark (the demo's, written to ``<out>/data``) and the base
training recipe and test-time K are the demo's; ``--data ROOT`` points at the docs/method.md
section 6 layout instead (base config configs/rsfm120k.py). ``--config FILE`` and
``--config.key=value`` change the base recipe that every study varies. ``--size tiny`` shrinks
benchmark, model, schedule and grids to seconds (tests). The library side is
``csa_jax.experiments`` (``context.make_context``, ``dispatch.run_study``).
Training runs live in ``<out>/runs/<hash of config and data>`` and are reused across studies and
re-invocations (a killed study resumes), so use a fresh ``--out`` for unrelated work. Neither
``<out>/<NAME>.json`` nor its PNG may be an input (--config, or --model: a file, or a workdir
they would lie in), checked first.
"""

from __future__ import annotations

import argparse
import os

from csa_jax import configs
from csa_jax.errors import InputError
from csa_jax.fileio import check_distinct
from csa_jax.experiments.baseline_study import markdown_table
from csa_jax.experiments.context import make_context
from csa_jax.experiments.dispatch import EXPERIMENTS, run_study


def _csv(text: str | None, type_=str, name: str = "list") -> list | None:
  if text is None:
    return None
  try:
    return [type_(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise InputError(f"command line: {name}: expected a comma-separated list of "
                     f"{type_.__name__}, found {text!r}") from None


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="csa-jax experiment", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("name", choices=EXPERIMENTS)
  p.add_argument("--out", default="runs/experiments",
                 help="outputs, data, runs (default: %(default)s)")
  p.add_argument("--size", choices=("tiny", "default"), default="default")
  p.add_argument("--data", help="data root (docs/method.md section 6 layout); default: the "
                 "synthetic benchmark")
  p.add_argument("--features", help="descriptor set names, comma-separated (first = default)")
  p.add_argument("--datasets", help="test sets, comma-separated (with --data)")
  p.add_argument("--K", type=int, help="test-time re-ranking depth (default: the config's "
                 "eval.K; the demo's 128 on the synthetic benchmark)")
  p.add_argument("--model", help="trained model (export, workdir or .pth) for baselines/kl-sweep")
  p.add_argument("--axes", default="depth,dim,mse,temperature", help="ablation axes")
  p.add_argument("--values", help="ablation: this axis's values instead of the paper grid "
                 "(with a single --axes)")
  p.add_argument("--seeds", type=int, default=5, help="seeds study: number of seeds")
  p.add_argument("--train-on", help="cross-feature: descriptor sets to train on (default: all)")
  p.add_argument("--k-values", help="kl-sweep: test-time K values")
  p.add_argument("--l-values", help="kl-sweep: L values (one model each)")
  p.add_argument("--holdout", type=float, default=0.2, help="heldout-val: fraction of clusters")
  p.add_argument("--val-queries", type=int, default=500, help="heldout-val: at most this many")
  p.add_argument("--baseline-k", help="baselines: k grid of AQE / alpha-QE / alpha-DBA")
  p.add_argument("--no-progress", dest="progress", action="store_false")
  return p


def main(argv: list[str]) -> int:
  config_path, overrides, rest = configs.split_flags(argv)
  a = _parser().parse_args(rest)
  options = dict(axes=_csv(a.axes), values=_csv(a.values), seeds=a.seeds,
                 train_on=_csv(a.train_on), k_values=_csv(a.k_values, int, "--k-values"),
                 l_values=_csv(a.l_values, int, "--l-values"), holdout=a.holdout,
                 val_queries=a.val_queries, baseline_k=_csv(a.baseline_k, int, "--baseline-k"))
  # Before the synthetic data or any run is written: <out>/<NAME>.json and .png must not be a
  # file the study reads, nor lie inside a workdir given as --model. (A --data root is not
  # passed whole: results beside the data are fine, and the files it reads have other names.)
  check_distinct([("--out", os.path.join(a.out, f"{a.name}{ext}")) for ext in (".json", ".png")],
                 [("--config", config_path), ("--model", a.model)])
  ctx = make_context(a.name, a.out, size=a.size, data=a.data, features=_csv(a.features),
                     datasets=_csv(a.datasets), K=a.K, config_path=config_path,
                     overrides=overrides, progress=a.progress, model_path=a.model)
  res = run_study(ctx, **options)
  if a.name == "baselines":
    print(markdown_table(res["table"], ctx.data.datasets))
  return 0
