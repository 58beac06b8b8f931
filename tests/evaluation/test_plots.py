"""The per-query AP plot: both kinds of panel, written as a PNG."""

import numpy as np

from csa_jax.evaluation import plots
from csa_jax.evaluation.revisited import revisited_map


def results(seed):
  rng = np.random.default_rng(seed)
  ranks = np.stack([rng.permutation(40) for _ in range(6)])
  gnd = [{"easy": [i], "hard": [i + 10, i + 20], "junk": [i + 30]} for i in range(6)]
  gnd[0]["hard"] = []  # a query without hard positives: NaN, left out of the plot
  return revisited_map(ranks, gnd)


def test_figure_layout():
  fig = plots.ap_figure({"a": (results(0), results(1)), "b": (results(2), None)})
  axes = fig.get_axes()
  assert len(axes) == 4
  assert axes[0].get_title().startswith("a Medium: mAP ") and "->" in axes[0].get_title()
  assert axes[3].get_title().startswith("b Hard: mAP ") and "->" not in axes[3].get_title()
  assert len(axes[1].collections[0].get_offsets()) == 5  # 6 queries, one without positives


def test_save_writes_a_png(tmp_path):
  plots.save_ap_plot(tmp_path / "ap.png", {"x": (results(0), results(3))})
  assert (tmp_path / "ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert [p.name for p in tmp_path.iterdir()] == ["ap.png"]
