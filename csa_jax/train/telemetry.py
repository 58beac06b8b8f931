"""Training telemetry: a progress line (log records), metrics as JSON lines, a PNG of the curves,
and ``run.json``'s record of every start (``record_start``).

Only process 0 writes files; every record carries the global step so a resumed run can drop
the lines a killed run wrote after its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np

from csa_jax.evaluation.plots import agg_figure
from csa_jax.fileio import atomic_path, io_path, write_json

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "training_curves.png"

log = logging.getLogger(__name__)


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "--:--:--"
  s = int(round(seconds))
  return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
  """Training throughput and ETA; one INFO record per update (the line ``csa-jax train`` shows).

  Args:
    total_steps: steps of the whole run.
    start_step: the step this call starts at (a resumed run's checkpoint).
    global_batch: samples per step.
    enabled: log the per-interval line (False on all but process 0, or when asked for quiet).
  """

  def __init__(self, total_steps: int, start_step: int, global_batch: int, enabled: bool = True):
    self.total, self.batch = total_steps, global_batch
    self.enabled = enabled
    self.t0 = time.perf_counter()
    self.t_last, self.step_last = self.t0, start_step
    self.excluded = 0.0

  def exclude(self, seconds: float) -> None:
    """Time spent outside training steps (checkpoints, plots, evaluation): not throughput."""
    self.excluded += seconds

  def rate(self, step: int) -> float:
    """Training samples/s since the previous call, excluded time left out."""
    now = time.perf_counter()
    dt, ds = now - self.t_last - self.excluded, step - self.step_last
    self.t_last, self.step_last, self.excluded = now, step, 0.0
    return ds * self.batch / dt if dt > 0 and ds > 0 else float("nan")

  def update(self, step: int, epoch: int, epochs: int, fields: dict,
             samples_per_s: float) -> None:
    """Logs ``train: step s/total | epoch | % | fields... | samples/s | ETA``.

    Args:
      step: steps done.
      epoch: the current epoch (0-based).
      epochs: epochs of the run.
      fields: name -> value of the metrics to show (e.g. loss, lr).
      samples_per_s: the latest throughput, which the ETA assumes from here on.
    """
    if not self.enabled:
      return
    eta = (self.total - step) * self.batch / samples_per_s if samples_per_s > 0 else float("nan")
    parts = [f"step {step}/{self.total}", f"epoch {epoch + 1}/{epochs}",
             f"{100.0 * step / max(self.total, 1):5.1f}%"]
    parts += [f"{k} {v:.4g}" for k, v in fields.items()]
    parts += [f"{samples_per_s:.1f} samples/s", f"ETA {_fmt_time(eta)}"]
    log.info("train: %s", " | ".join(parts))


def summarize(records: list[dict]) -> dict:
  """Means of the per-step metrics over an interval; losses only over applied steps."""
  applied = [r for r in records if r["ok"]]
  out = {}
  for k in ("loss", "contrastive", "mse", "grad_norm"):
    vals = [r[k] for r in applied if math.isfinite(r[k])]
    out[k] = float(np.mean(vals)) if vals else float("nan")
  if "lr" in records[-1]:
    out["lr"] = float(records[-1]["lr"])
  out["skipped"] = int(records[-1]["skipped"])
  return out


class MetricsLog:
  """Appends JSON lines to ``<workdir>/metrics.jsonl`` (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, METRICS_NAME)
    self.enabled = enabled

  def truncate_after(self, step: int) -> None:
    """Drops records of steps > ``step`` (written by a run killed after its last checkpoint)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with io_path(self.path):
      keep = [line for line in read_jsonl(self.path, raw=True)
              if json.loads(line).get("step", 0) <= step]
      with atomic_path(self.path) as tmp, open(tmp, "w") as f:
        f.writelines(line + "\n" for line in keep)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    with io_path(self.path), open(self.path, "a") as f:
      f.write(json.dumps(record, allow_nan=True) + "\n")


def read_jsonl(path: str, raw: bool = False) -> list:
  """Records of a metrics file; a torn last line (killed mid-write) is ignored."""
  out = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      out.append(line if raw else rec)
  return out


def plot_curves(metrics_path: str, png_path: str) -> bool:
  """Loss terms, gradient norm and learning rate over steps; False when there is nothing yet."""
  if not os.path.exists(metrics_path):
    return False
  recs = [r for r in read_jsonl(metrics_path) if r.get("kind") == "train"]
  if not recs:
    return False
  steps = [r["step"] for r in recs]
  fig = agg_figure((8, 8))
  axes = fig.subplots(3, 1, sharex=True)
  for k, label in (("loss", "loss"), ("contrastive", "contrastive"), ("mse", "MSE term")):
    axes[0].plot(steps, [r[k] for r in recs], label=label, linewidth=1)
  axes[0].set_ylabel("loss")
  axes[0].legend(loc="upper right")
  axes[1].plot(steps, [r["grad_norm"] for r in recs], color="tab:red", linewidth=1)
  axes[1].set_ylabel("gradient global norm")
  axes[2].plot(steps, [r.get("lr", float("nan")) for r in recs], color="tab:green",
               linewidth=1)
  axes[2].set_ylabel("learning rate")
  axes[2].set_xlabel("step")
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  with io_path(png_path), atomic_path(png_path) as tmp:
    fig.savefig(tmp, format="png", dpi=100)
  return True


def record_start(path: str, record: dict) -> None:
  """Adds a start of the run to ``run.json``, keeping every earlier one.

  ``run.json`` is ``{**latest start, "starts": [every start, oldest first]}``: its top level
  reads as the single record earlier versions wrote (the latest start's versions, devices,
  command, config and ``started_at_step``), and such a single-record file becomes the first
  entry of ``starts``. A file that is not a JSON object cannot be kept: one warning, and the
  record starts anew.

  Args:
    path: ``<workdir>/run.json``.
    record: this start (``run_info`` plus ``started_at_step``).
  """
  starts = []
  try:
    with open(path) as f:
      old = json.load(f)
  except FileNotFoundError:
    old = {}
  except (OSError, ValueError) as e:
    log.warning("%s: unreadable (%s); its earlier starts are not kept", path, type(e).__name__)
    old = {}
  if isinstance(old, dict) and isinstance(old.get("starts"), list):
    starts = [s for s in old["starts"] if isinstance(s, dict)]
  elif isinstance(old, dict) and old:
    starts = [old]  # the single record of an earlier version
  elif not isinstance(old, dict):
    log.warning("%s: not a JSON object; its earlier starts are not kept", path)
  record = {k: v for k, v in record.items() if k != "starts"}
  with io_path(path):
    write_json(path, {**record, "starts": [*starts, record]})
