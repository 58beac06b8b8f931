"""What a study writes: ``<out>/<name>.json`` (results with their context) and a figure."""

from __future__ import annotations

import logging
import time

import jax

from csa_jax import configs
from csa_jax.experiments.context import Context
from csa_jax.fileio import atomic_path, write_json

logger = logging.getLogger(__name__)


def fmt_s(seconds: float) -> str:
  """``h:mm:ss``."""
  s = int(round(seconds))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def pyplot():
  """matplotlib's pyplot on the file-only Agg backend (imported on first use: optional)."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def save_figure(fig, path: str) -> None:
  """Writes ``fig`` as a PNG, atomically, and closes it."""
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
  pyplot().close(fig)


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
  result = {"experiment": ctx.name, "size": ctx.size, "data": ctx.bench.describe(),
            "feature": ctx.feature, "test_K": ctx.K, "base_config": configs.as_plain(ctx.config),
            "devices": f"{jax.default_backend()} x{jax.device_count()}",
            **result, "seconds": round(time.perf_counter() - t0, 1)}
  write_json(ctx.path(f"{ctx.name}.json"), result)
  save_figure(fig, ctx.path(f"{ctx.name}.png"))
  logger.info("experiment: %s: wrote %s and .png in %s", ctx.name,
              ctx.path(ctx.name + ".json"), fmt_s(result["seconds"]))
  return result
