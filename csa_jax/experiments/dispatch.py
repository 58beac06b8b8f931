"""One study by name: its options checked, defaults for the tiny size, its JSON and figure written.

``csa-jax experiment`` parses the command line into these options; the values are checked here,
where what they must match (the study data's descriptor sets, the config's value types) is known.
"""

from __future__ import annotations

import time

from csa_jax import configs
from csa_jax.errors import InputError
from csa_jax.experiments import studies as st
from csa_jax.experiments.context import Context
from csa_jax.experiments.output import finish

EXPERIMENTS = ("ablation", "seeds", "cross-feature", "kl-sweep", "heldout-val", "baselines")
# Test-time sweeps (kl-sweep): K at test time, L one model each.
K_VALUES = (8, 16, 32, 64, 128, 256, 512, 1024)
L_VALUES = (16, 32, 64, 128, 256)
K_VALUES_TINY, L_VALUES_TINY = (8, 16), (4, 8)


def _typed(values: list[str], like, flag: str) -> list:
  """``values`` converted to the type of the config value ``like``."""
  kind = type(like)
  try:
    return [kind(v) for v in values]
  except ValueError:
    raise InputError(f"command line: {flag}: expected a comma-separated list of "
                     f"{kind.__name__}, found {','.join(values)!r}") from None


def run_study(ctx: Context, *, axes: list[str] | None = None, values: list[str] | None = None,
              seeds: int = 5, train_on: list[str] | None = None,
              k_values: list[int] | None = None, l_values: list[int] | None = None,
              holdout: float = 0.2, val_queries: int = 500,
              baseline_k: list[int] | None = None) -> dict:
  """Runs study ``ctx.name`` and writes ``<out>/<name>.json`` and ``.png``.

  Args:
    ctx: the study (``context.make_context``).
    axes: ablation: ``studies.ABLATION_AXES`` names.
    values: ablation: this single axis's values (strings, typed like the config's value).
    seeds: seeds: number of seeds.
    train_on: cross-feature: descriptor sets to train on (default all of the study data's).
    k_values: kl-sweep: test-time K values (default ``K_VALUES``, tiny ``K_VALUES_TINY``).
    l_values: kl-sweep: L values, one model each (default ``L_VALUES``, tiny ``L_VALUES_TINY``).
    holdout: heldout-val: fraction of clusters held out, in (0, 1).
    val_queries: heldout-val: validation queries at most.
    baseline_k: baselines: k grid of AQE / alpha-QE / alpha-DBA (k >= 0).

  Returns:
    The JSON written.
  """
  from csa_jax.experiments import heldout  # noqa: PLC0415  (training stack: only when run)
  from csa_jax.experiments.baseline_study import run_baselines  # noqa: PLC0415
  t0 = time.perf_counter()
  tiny = ctx.size == "tiny"
  if ctx.name == "ablation":
    axes = axes or []
    bad = sorted(set(axes) - set(st.ABLATION_AXES))
    if bad or not axes:
      raise InputError(f"command line: --axes: expected some of {sorted(st.ABLATION_AXES)}, "
                       f"found {bad or axes}")
    grid = None
    if values is not None:
      if len(axes) != 1:
        raise InputError(f"command line: --values: expected a single --axes, found {axes}")
      key = st.ABLATION_AXES[axes[0]][0]
      grid = {axes[0]: _typed(values, st.config_value(ctx.config, key), "--values")}
    result, fig = st.ablation(ctx, axes, grid)
  elif ctx.name == "seeds":
    result, fig = st.seeds(ctx, configs.check_positive("--seeds", [seeds])[0])
  elif ctx.name == "cross-feature":
    train_on = train_on or ctx.data.features
    bad = sorted(set(train_on) - set(ctx.data.features))
    if bad:
      raise InputError(f"command line: --train-on: expected some of {ctx.data.features}, "
                       f"found {bad}")
    result, fig = st.cross_feature(ctx, train_on)
  elif ctx.name == "kl-sweep":
    ks = configs.check_positive("--k-values", k_values or (K_VALUES_TINY if tiny else K_VALUES))
    ls = configs.check_positive("--l-values", l_values or (L_VALUES_TINY if tiny else L_VALUES))
    result, fig = st.kl_sweep(ctx, ks, ls)
  elif ctx.name == "heldout-val":
    if not 0 < holdout < 1:
      raise InputError(f"command line: --holdout: expected a fraction in (0, 1), found "
                       f"{holdout}")
    result, fig = heldout.heldout_val(ctx, holdout,
                                      configs.check_positive("--val-queries", [val_queries])[0])
  elif ctx.name == "baselines":
    if baseline_k is not None and (not baseline_k or min(baseline_k) < 0):
      raise InputError(f"command line: --baseline-k: expected k >= 0, found {baseline_k}")
    result, fig = run_baselines(ctx, baseline_k)
  else:
    raise InputError(f"command line: name: expected one of {EXPERIMENTS}, found {ctx.name!r}")
  return finish(ctx, result, fig, t0)
