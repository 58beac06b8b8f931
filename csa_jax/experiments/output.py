"""What a study writes: ``<out>/<name>.json`` (results with their context) and a figure.

Figures are made by ``subplots`` on their own Agg canvas (``evaluation.plots.agg_figure``):
running a study neither changes the user's matplotlib backend nor leaves figures in pyplot.
"""

from __future__ import annotations

import logging
import time

import jax

from csa_jax import configs
from csa_jax.evaluation.plots import agg_figure
from csa_jax.experiments.context import Context
from csa_jax.fileio import atomic_path, write_json

log = logging.getLogger(__name__)


def fmt_s(seconds: float) -> str:
  """``h:mm:ss``."""
  s = int(round(seconds))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs):
  """A new figure and its grid of axes, as ``pyplot.subplots`` returns them, outside pyplot.

  Args:
    nrows, ncols: the grid.
    figsize: (width, height) in inches.
    **kwargs: ``Figure.subplots`` arguments (``squeeze``, ``sharex``, ...).

  Returns:
    (figure, axes): one ``Axes`` for a squeezed 1 x 1 grid, else an array of them.
  """
  fig = agg_figure(figsize)
  return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig, path: str) -> None:
  """Writes ``fig`` as a PNG, atomically."""
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def finish(ctx: Context, result: dict, fig, t0: float) -> dict:
  """Writes ``<out>/<name>.json`` (with context and wall time) and ``<out>/<name>.png``.

  Args:
    ctx: the study.
    result: the study's results.
    fig: its matplotlib figure.
    t0: ``time.perf_counter()`` when the study started.

  Returns:
    The JSON written.
  """
  result = {"experiment": ctx.name, "size": ctx.size, "data": ctx.data.describe(),
            "feature": ctx.feature, "test_K": ctx.K, "base_config": configs.as_plain(ctx.config),
            "devices": f"{jax.default_backend()} x{jax.device_count()}",
            **result, "seconds": round(time.perf_counter() - t0, 1)}
  write_json(ctx.path(f"{ctx.name}.json"), result)
  save_figure(fig, ctx.path(f"{ctx.name}.png"))
  log.info("experiment: %s: wrote %s and .png in %s", ctx.name,
           ctx.path(ctx.name + ".json"), fmt_s(result["seconds"]))
  return result
