"""The PNGs of ``csa-jax bench --curves``: one figure per sweep, one line per implementation.

Re-rank against K: time per query (log scale: attention grows as K^2), achieved GFLOP/s against
the run's matmul peak, peak memory per query. Against the batch (re-rank, training): items/s and
peak memory per item. The x axis is log2 with a tick at every measured size; a failed point (out
of memory) is a gap. Figures from ``csa_jax.evaluation.plots.agg_figure`` (no pyplot state, no
backend change, no display needed); the caller writes atomically.
"""

from __future__ import annotations

import numpy as np

from csa_jax.evaluation.plots import agg_figure

MIB = 2.0 ** 20
# sweep -> (title, x label, item, panels); a panel is (series field, y label, scale, log y).
SWEEP_PLOTS = {
    "rerank_vs_k": ("re-ranking: cost against K", "K, candidates re-ranked per query", "query", (
        ("s_per_item", "time per query (ms)", 1e3, True),
        ("achieved_flops", "achieved GFLOP/s (matmul cost model)", 1e-9, False),
        ("mem_per_item_bytes", "peak memory per query (MiB)", 1 / MIB, False))),
    "rerank_vs_batch": ("re-ranking: throughput against the batch", "query batch", "query", (
        ("items_per_s", "queries/s", 1.0, False),
        ("mem_per_item_bytes", "peak memory per query (MiB)", 1 / MIB, False))),
    "train_vs_batch": ("training: throughput against the batch", "training batch (samples)",
                       "sample", (
                           ("items_per_s", "samples/s", 1.0, False),
                           ("mem_per_item_bytes", "peak memory per sample (MiB)", 1 / MIB,
                            False))),
}


def _subtitle(curve: dict, doc: dict) -> str:
  """The fixed sizes, the model and the machine, one line."""
  m, mach = doc["config"]["model"], doc["machine"]
  fixed = ", ".join(f"{k} {v}" for k, v in curve["fixed"].items())
  return (f"{fixed}; L={m['anchors']} D={m['dim']} depth {m['depth']} H={m['heads']}, csa_jax "
          f"{m['dtype']}; jax on {mach['jax_backend']} [{mach['jax_device']}], torch on "
          f"{mach.get('torch_device', '-')}; median of {doc['repeats']} rounds")


def _memory_methods(curve: dict) -> list[str]:
  """'impl: method' of the memory probe, per implementation that has one."""
  methods = {}
  for r in curve["rows"]:
    if r.get("peak_mem_method"):
      methods.setdefault(r["impl"], r["peak_mem_method"])
  if len(set(methods.values())) == 1:
    return list(set(methods.values()))
  return [f"{i}: {m}" for i, m in methods.items()] or ["(not measured)"]


def curve_figure(name: str, curve: dict, doc: dict):
  """The figure of one sweep.

  Args:
    name: the sweep, a key of ``SWEEP_PLOTS``.
    curve: its JSON (``curves.measure``): x, fixed, series.
    doc: the curves document (config, machine, repeats, matmul_peak_flops) for the titles.

  Returns:
    A ``matplotlib.figure.Figure`` on an Agg canvas.
  """
  # Imported here, as csa_jax.evaluation.plots does: only a curves run pays for matplotlib.
  from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: PLC0415
  plain = FuncFormatter(lambda v, _: f"{v:g}")  # 200, not 2 x 10^2, on the log axes
  title, xlabel, item, panels = SWEEP_PLOTS[name]
  fig = agg_figure((4.6 * len(panels), 4.2), layout="constrained")
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  xs = np.asarray(curve["x"], float)
  for ax, (field, ylabel, scale, log_y) in zip(axes, panels):
    for impl, series in curve["series"].items():
      ys = np.asarray([np.nan if v is None else v * scale for v in series[field]], float)
      style = "--" if impl.startswith("torch") else "-"
      ax.plot(xs, ys, style, marker="o", ms=4, label=impl)
    if field == "achieved_flops" and doc.get("matmul_peak_flops"):
      ax.axhline(doc["matmul_peak_flops"] * scale, color="0.5", lw=0.8, ls=":",
                 label="matmul peak (this run)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(int(x)) for x in xs])
    ax.xaxis.set_minor_locator(NullLocator())
    if log_y:
      ax.set_yscale("log")
      ax.yaxis.set_major_formatter(plain)
      ax.yaxis.set_minor_formatter(plain)
    else:
      ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if field == "mem_per_item_bytes":  # the probes differ by backend: say which one this is
      ax.set_title("measured as\n" + "\n".join(_memory_methods(curve)), fontsize=7)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"csa-jax bench {title} (per {item})\n{_subtitle(curve, doc)}", fontsize=9)
  return fig


def save_curve_plot(path, name: str, curve: dict, doc: dict) -> None:
  """Writes ``curve_figure(name, curve, doc)`` to ``path`` as a PNG (not atomic by itself).

  Args:
    path: the .png file (``curves.write`` passes a temporary path of ``atomic_paths``).
    name, curve, doc: as ``curve_figure``.
  """
  fig = curve_figure(name, curve, doc)
  fig.savefig(path, format="png", dpi=100)
