"""csa_jax's plots leave matplotlib's global state alone: the user's backend and pyplot's figures.

Every module that draws (training curves, the AP plot, the studies' figures, the benchmark's cost
curves) is imported and run inside a session that chose a non-Agg backend and has a pyplot figure
open; both must be as they were afterwards.
"""

import json

import matplotlib
import numpy as np
import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def users_pyplot():
  """A user's session: the pdf backend chosen (not Agg, so a switch shows) and one figure open."""
  before = matplotlib.get_backend()
  matplotlib.use("pdf")
  import matplotlib.pyplot as plt  # noqa: PLC0415  (after the backend is chosen, as a user would)
  plt.figure()
  yield plt
  plt.close("all")
  matplotlib.use(before)


def _train_records(path):
  with open(path, "w") as f:
    for step in (1, 2, 3):
      f.write(json.dumps({"kind": "train", "step": step, "loss": 1.0 / step, "contrastive": 0.5,
                          "mse": 0.1, "grad_norm": 2.0, "lr": 0.01}) + "\n")


def test_importing_and_plotting_leave_backend_and_pyplot_figures_unchanged(users_pyplot,
                                                                            tmp_path):
  plt = users_pyplot
  backend, figures = matplotlib.get_backend(), plt.get_fignums()
  assert backend == "pdf" and len(figures) == 1
  # Imported here, after the user's choice: importing must not change the state either.
  # pylint: disable=g-import-not-at-top
  from csa_jax.bench import contestants, curve_plots, curves
  from csa_jax.evaluation import plots
  from csa_jax.evaluation.revisited import revisited_map
  from csa_jax.experiments import output
  from csa_jax.train import telemetry

  metrics = tmp_path / telemetry.METRICS_NAME
  _train_records(metrics)
  assert telemetry.plot_curves(str(metrics), str(tmp_path / "curves.png"))

  ranks = np.stack([np.random.default_rng(i).permutation(20) for i in range(3)])
  res = revisited_map(ranks, [{"easy": [i], "hard": [i + 5], "junk": []} for i in range(3)])
  plots.save_ap_plot(tmp_path / "ap.png", {"x": (res, res)})

  fig, ax = output.subplots(figsize=(3, 2))
  ax.plot([0, 1], [1, 0])
  output.save_figure(fig, str(tmp_path / "study.png"))

  row = {"impl": contestants.JAX, "batch": 1, "s_per_item": 0.1, "items_per_s": 10.0,
         "achieved_flops": 1e9, "mem_per_item_bytes": 2.0 ** 20}
  curve = curves._curve("batch", [1], [row], {"K": 8})  # pylint: disable=protected-access
  doc = {"config": {"model": {"anchors": 8, "dim": 16, "depth": 1, "heads": 2,
                              "dtype": "float32"}},
         "machine": {"jax_backend": "cpu", "jax_device": "cpu"}, "repeats": 1,
         "matmul_peak_flops": 2e9}
  curve_plots.save_curve_plot(str(tmp_path / "bench.png"), "rerank_vs_batch", curve, doc)

  for name in ("curves.png", "ap.png", "study.png", "bench.png"):
    assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC, name
  assert matplotlib.get_backend() == backend
  assert plt.get_fignums() == figures
