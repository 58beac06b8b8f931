"""The per-query AP plot of ``csa-jax eval``: first round against CSA, one panel per protocol.

With CSA results each panel is a scatter of every query's first-round AP (x) against its CSA AP
(y), the diagonal marking "no change", and the count of queries above and below it; without them
it shows the first round's per-query APs as sorted bars. One row of panels per dataset, the
Medium and Hard protocols (Easy is usually saturated) as columns; written atomically.

``agg_figure`` is how every csa_jax figure is made (this plot, the training curves, the studies',
the benchmark's cost curves): matplotlib's Agg canvas directly, so no pyplot state is created and
the user's backend is never changed, and no display is needed.
"""

from __future__ import annotations

import numpy as np

from csa_jax.evaluation.revisited import percent
from csa_jax.fileio import atomic_path

PLOT_PROTOCOLS = ("medium", "hard")


def agg_figure(figsize: tuple[float, float], **kwargs):
  """A new figure on its own Agg canvas, outside pyplot.

  Library code must not call ``matplotlib.use`` or keep figures in pyplot's list: a user's
  interactive backend and open figures stay as they were, and the figure is freed like any object.

  Args:
    figsize: (width, height) in inches.
    **kwargs: more ``matplotlib.figure.Figure`` arguments (e.g. ``layout="constrained"``).

  Returns:
    The ``Figure``: ``fig.subplots`` adds axes, ``fig.savefig`` writes it.
  """
  # Imported here: matplotlib is only paid for by the runs that plot.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
  from matplotlib.figure import Figure  # noqa: PLC0415
  fig = Figure(figsize=figsize, **kwargs)
  FigureCanvasAgg(fig)
  return fig


def _panel(ax, first: dict, csa: dict | None, title: str) -> None:
  """One dataset and protocol: scatter (with CSA) or sorted bars (first round only)."""
  a = percent(first["aps"], None)
  keep = ~np.isnan(a)  # queries without positives in this protocol
  if csa is None:
    v = np.sort(a[keep])[::-1]
    ax.bar(np.arange(len(v)), v, width=1.0, color="tab:blue")
    ax.set_xlabel("queries, sorted")
    ax.set_ylabel("first-round AP (%)")
    ax.set_title(f"{title}: mAP {percent(first['map'])}", fontsize=9)
    ax.set_ylim(0, 100)
    return
  b = percent(csa["aps"], None)
  x, y = a[keep], b[keep]
  up, down = int(np.sum(y > x)), int(np.sum(y < x))
  ax.plot([0, 100], [0, 100], color="0.6", lw=0.8, zorder=1)
  ax.scatter(x, y, s=12, alpha=0.7, color="tab:red", zorder=2,
             label=f"CSA better: {up}, worse: {down}, same: {len(x) - up - down}")
  ax.set_xlim(-2, 102)
  ax.set_ylim(-2, 102)
  ax.set_aspect("equal")
  ax.set_xlabel("first-round AP (%)")
  ax.set_ylabel("CSA AP (%)")
  ax.set_title(f"{title}: mAP {percent(first['map'])} -> {percent(csa['map'])}", fontsize=9)
  ax.legend(loc="lower right", fontsize=7)


def ap_figure(results: dict):
  """The figure.

  Args:
    results: {dataset: (first_round, csa or None)}, ``evaluate``'s results dicts (fractions,
      per-query 'aps').

  Returns:
    A ``matplotlib.figure.Figure`` on an Agg canvas.
  """
  rows = len(results)
  fig = agg_figure((4.2 * len(PLOT_PROTOCOLS), 4.0 * rows), layout="constrained")
  axes = np.asarray(fig.subplots(rows, len(PLOT_PROTOCOLS), squeeze=False))
  for r, (name, (first, csa)) in enumerate(results.items()):
    for c, p in enumerate(PLOT_PROTOCOLS):
      _panel(axes[r, c], first[p], None if csa is None else csa[p], f"{name} {p.title()}")
  return fig


def save_ap_plot(path, results: dict) -> None:
  """Writes ``ap_figure(results)`` to ``path`` as a PNG, atomically.

  Args:
    path: the .png file.
    results: as ``ap_figure``.
  """
  fig = ap_figure(results)
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=100)
