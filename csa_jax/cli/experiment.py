"""``csa-jax experiment NAME``: the paper's studies and the classic re-ranking baselines.

  csa-jax experiment baselines                 # README table on the synthetic benchmark
  csa-jax experiment ablation --axes depth,mse # supplement Figure 1 (two of its four axes)
  csa-jax experiment seeds --seeds 5
  csa-jax experiment cross-feature
  csa-jax experiment kl-sweep
  csa-jax experiment heldout-val
  csa-jax experiment baselines --data /data/csa --features gl18-tl-resnet101-gem-w \\
      --datasets roxford5k,rparis6k --config configs/rsfm120k.py --model runs/rsfm120k

Each writes ``<out>/<NAME>.json`` and ``<out>/<NAME>.png``. By default the data is the built-in
synthetic benchmark (the demo's, written to ``<out>/data``) and the base training recipe and
test-time K are the demo's; ``--data ROOT`` points at the docs/method.md section 6 layout instead (base
config configs/rsfm120k.py). ``--config FILE`` and ``--config.key=value`` change the base recipe
that every study varies. ``--size tiny`` shrinks benchmark, model, schedule and grids to seconds
(tests).
Training runs live in ``<out>/runs/<hash of config and data>`` and are reused across studies and
re-invocations (a killed study resumes), so use a fresh ``--out`` for unrelated work.
"""

from __future__ import annotations

import argparse
import os
import time

from csa_jax import configs
from csa_jax.cli import demo
from csa_jax.errors import InputError
from csa_jax.fileio import check_output_path
from csa_jax.experiments.common import Bench, Context, check_positive, finish, write_synthetic

EXPERIMENTS = ("ablation", "seeds", "cross-feature", "kl-sweep", "heldout-val", "baselines")

# The demo's tiny benchmark: kept in step with the generator by its owner.
TINY_SYNTH = demo.SIZES["tiny"][0]
TINY_CONFIG = {"model.anchors": 8, "model.dim": 16, "model.depth": 1, "model.heads": 2,
               "model.mlp_ratio": 2, "data.K": 8, "train.global_batch": 16, "train.epochs": 2,
               "train.warmup_epochs": 1, "log.every_steps": 4,
               # Without dropout the training step compiles about twice as fast on CPU, which
               # is most of a tiny run's time.
               "model.drop": 0.0, "model.attn_drop": 0.0, "model.drop_path": 0.0}
TINY_K = 16
DEMO_K = demo.SIZES["default"][2]
# Test-time sweeps (kl-sweep): K at test time, L one model each.
K_VALUES = (8, 16, 32, 64, 128, 256, 512, 1024)
L_VALUES = (16, 32, 64, 128, 256)
K_VALUES_TINY, L_VALUES_TINY = (8, 16), (4, 8)


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
  p.add_argument("--data", help="data root (docs/method.md section 6 layout); default: synthetic benchmark")
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


def make_context(a, config_path, overrides) -> Context:
  """The study's Context from parsed arguments (writes the synthetic benchmark when needed)."""
  out = os.path.abspath(a.out)
  if os.path.exists(out) and not os.path.isdir(out):
    raise InputError(f"{out}: --out: expected a directory for the study's outputs, found a file")
  check_output_path(os.path.join(out, "study.json"), "--out")
  if a.data:
    features = _csv(a.features)
    datasets = _csv(a.datasets) or ["roxford5k", "rparis6k"]
    if not features:
      raise InputError("command line: --features: expected descriptor set names with --data "
                       "(e.g. gl18-tl-resnet101-gem-w), found none")
    bench = Bench(os.path.abspath(a.data), features, datasets)
    config = configs.load_file(config_path or "rsfm120k")
    default_k = config.get("eval", {}).get("K", 1024)
  else:
    cfg = TINY_SYNTH if a.size == "tiny" else demo.SIZES["default"][0]
    bench = write_synthetic(os.path.join(out, "data"), cfg)
    if a.features:
      chosen = _csv(a.features)
      unknown = sorted(set(chosen) - set(bench.features))
      if unknown:
        raise InputError(f"command line: --features: expected synthetic sets "
                         f"{bench.features}, found {unknown}")
      bench.features = chosen
    # The demo's recipe and test-time K by default, so that the studies' numbers and the
    # README's demo table describe the same model.
    config = configs.load_file(config_path) if config_path else demo.demo_config(bench.root)
    default_k = config.get("eval", {}).get("K", DEMO_K) if config_path else DEMO_K
  if a.size == "tiny":
    for k, v in TINY_CONFIG.items():
      configs.set_override(config, k, str(v), source="--size tiny")
  for k, v in overrides:
    configs.set_override(config, k, v)
  configs.set_override(config, "data.root", bench.root, source="experiment")
  K = a.K or (TINY_K if a.size == "tiny" else default_k)
  check_positive("--K", [K])
  return Context(name=a.name, out=out, config=config, bench=bench, K=K,
                 feature=bench.features[0], size=a.size, progress=a.progress,
                 model_path=a.model)


def run(ctx: Context, a) -> dict:
  """Runs study ``ctx.name``; writes and returns its JSON."""
  from csa_jax.experiments import studies as st  # noqa: PLC0415
  from csa_jax.experiments.baseline_study import run_baselines  # noqa: PLC0415
  t0 = time.perf_counter()
  tiny = ctx.size == "tiny"
  if ctx.name == "ablation":
    axes = _csv(a.axes)
    bad = sorted(set(axes) - set(st.ABLATION_AXES))
    if bad or not axes:
      raise InputError(f"command line: --axes: expected some of {sorted(st.ABLATION_AXES)}, "
                       f"found {bad or axes}")
    grid = None
    if a.values is not None:
      if len(axes) != 1:
        raise InputError(f"command line: --values: expected a single --axes, found {axes}")
      key = st.ABLATION_AXES[axes[0]][0]
      grid = {axes[0]: _csv(a.values, type(st.config_value(ctx.config, key)), "--values")}
    result, fig = st.ablation(ctx, axes, grid)
  elif ctx.name == "seeds":
    result, fig = st.seeds(ctx, check_positive("--seeds", [a.seeds])[0])
  elif ctx.name == "cross-feature":
    train_on = _csv(a.train_on) or ctx.bench.features
    bad = sorted(set(train_on) - set(ctx.bench.features))
    if bad:
      raise InputError(f"command line: --train-on: expected some of {ctx.bench.features}, "
                       f"found {bad}")
    result, fig = st.cross_feature(ctx, train_on)
  elif ctx.name == "kl-sweep":
    ks = check_positive("--k-values", _csv(a.k_values, int, "--k-values") or
                        (K_VALUES_TINY if tiny else K_VALUES))
    ls = check_positive("--l-values", _csv(a.l_values, int, "--l-values") or
                        (L_VALUES_TINY if tiny else L_VALUES))
    result, fig = st.kl_sweep(ctx, ks, ls)
  elif ctx.name == "heldout-val":
    if not 0 < a.holdout < 1:
      raise InputError(f"command line: --holdout: expected a fraction in (0, 1), found "
                       f"{a.holdout}")
    result, fig = st.heldout_val(ctx, a.holdout, check_positive("--val-queries",
                                                                [a.val_queries])[0])
  else:
    ks = _csv(a.baseline_k, int, "--baseline-k")
    if ks is not None and (not ks or min(ks) < 0):
      raise InputError(f"command line: --baseline-k: expected k >= 0, found {a.baseline_k!r}")
    result, fig = run_baselines(ctx, ks)
  return finish(ctx, result, fig, t0)


def main(argv: list[str]) -> int:
  config_path, overrides, rest = configs.split_flags(argv)
  a = _parser().parse_args(rest)
  ctx = make_context(a, config_path, overrides)
  run(ctx, a)
  return 0
