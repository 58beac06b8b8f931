"""The training loop (docs/method.md section 5) as a library function: ``train(config, workdir)``.

Per step the host picks the global batch's sample indices (``pipeline``: a pure function of
seed, epoch and step, each process its own slice) and the jitted, data-parallel step
(``train_step``) builds the affinities on device and updates the replicated state. Everything
that decides the next step (state, dropout key, position in the data order) is checkpointed, so
``train(..., resume=True)`` after a kill at any point ends bitwise where an uninterrupted run
ends (on CPU). At the end: ``<workdir>/state_dict.npz`` (original PyTorch names, see
``export``), plus ``state_dict.pth`` when torch is installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import time

import jax

from csa_jax import configs, parallel, profiling
from csa_jax.core.config import ModelConfig
from csa_jax.errors import InputError, fail
from csa_jax.fileio import (io_path, missing_dirs, os_reason, remove_if_empty,
                            remove_stale_temps, write_json)
from csa_jax.interop import export
from csa_jax.interop.convert import save_pth
from csa_jax.run_info import run_info
from csa_jax.train import optim, telemetry, tensorboard, train_set as pipeline
from csa_jax.train import step as train_step
from csa_jax.train.checkpoint import Checkpointer
from csa_jax.train.checks import (check_outcome, check_resume_config, check_workdir,
                                  saved_config, validate_config, workdir_lock)

CONFIG_NAME = "config.json"
CHECKPOINTS_NAME = "checkpoints"
RUN_NAME = "run.json"
PROFILE_NAME = "profile"  # log.profile_steps' traces, unless log.profile_dir says elsewhere
PLOT_EVERY_S = 60.0  # redraw the curves at checkpoints at most this often (and at the end)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
  params: dict  # host numpy arrays
  model_cfg: ModelConfig
  step: int
  skipped: int
  workdir: str
  history: list  # the metric records of this call (process 0)


def model_config(config) -> ModelConfig:
  """The ``ModelConfig`` of a training config's ``model`` group; one ``InputError`` line if bad."""
  try:
    return ModelConfig(**config.model.to_dict())
  except (TypeError, ValueError) as e:
    raise InputError(f"config: model: expected valid ModelConfig fields, found {e}") from None


def microbatches(config) -> int:
  """``train.microbatches``; 1 for configs written before it existed."""
  return config.train.get("microbatches", 1)


def train(config, workdir: str, resume: bool = False, train_set=None, progress: bool = True,
          allow_config_change: bool = False,
          command_argv: list[str] | None = None) -> TrainResult:
  """Trains CSA as ``config`` says, in ``workdir``; returns the final parameters.

  Args:
    config: a training config (``configs/*.py``); every value is checked before any work.
    workdir: checkpoints, metrics (``metrics.jsonl`` and TensorBoard event files in
      ``tensorboard/``), plots, traces of ``log.profile_steps`` (``profile/``) and the final
      model; locked while the run lasts.
    resume: continue from the latest intact checkpoint in ``workdir`` (from scratch if there is
      none); without it a workdir that already holds checkpoints is an error.
    train_set: a ready ``pipeline.TrainSet`` instead of ``config.data`` (library use).
    progress: log a progress line (steps, ETA, throughput) at every metrics interval.
    allow_config_change: let ``resume`` go on with hyper-parameters other than the saved run's
      (never the model's shape, the batch or the seed).
    command_argv: the command line, recorded in ``<workdir>/run.json`` with the versions and
      devices of each start (``csa_jax.run_info``; ``telemetry.record_start``).

  Returns:
    A ``TrainResult``. A run that never applied an update, whose last epoch skipped every step
    (diverged), or whose parameters are not finite raises ``InputError`` and exports nothing;
    so does a resume whose ``train.epochs`` ends before the step it resumes at. A failed read or
    write of the workdir (a full disk, a read-only directory) is one ``InputError`` line naming
    the path and the errno; the checkpoints saved before it stay intact and resumable. A start
    that fails removes the ``.lock``, ``checkpoints/`` and directories it created while they
    are still empty, and nothing else.
  """
  validate_config(config, check_data=train_set is None)
  profiling.parse_step_range(config.log.get("profile_steps"))  # refused before any work
  model_cfg = model_config(config)
  # What this start creates, to be removed again (only while empty) when it fails: a failed
  # start leaves the workdir as it found it.
  new_dirs = missing_dirs(workdir) if os.fspath(workdir).strip() else []
  workdir = check_workdir(workdir)
  lead = jax.process_index() == 0
  try:
    mesh = parallel.make_mesh()
    train_step.check_microbatches(config.train.global_batch, microbatches(config), mesh)
    if config.train.global_batch % jax.process_count():
      raise InputError(f"config: train.global_batch: expected a multiple of the "
                       f"{jax.process_count()} processes, found {config.train.global_batch}")
    with workdir_lock(workdir, enabled=lead):
      if lead:
        remove_stale_temps(workdir)  # left by a run killed while writing its outputs
      ckpt_dir = os.path.join(workdir, CHECKPOINTS_NAME)
      new_ckpt_dirs = missing_dirs(ckpt_dir)
      try:
        ckpt = Checkpointer(ckpt_dir, keep=config.checkpoint.keep)
        try:
          return _train(config, model_cfg, workdir, mesh, ckpt, resume, train_set, progress,
                        allow_config_change, command_argv)
        except OSError as e:  # a write of the run's files (metrics, exports, ...) failed
          raise _io_failure(e, workdir, ckpt) from None
        finally:
          ckpt.close()  # before any error reaches the CLI: orbax threads must not outlive it
      except BaseException:
        if lead:
          remove_if_empty(new_ckpt_dirs)
        raise
  except BaseException:
    if lead:
      remove_if_empty(new_dirs)
    raise


def _io_failure(e: OSError, workdir: str, ckpt: Checkpointer) -> InputError:
  """One line for a failed read or write of the run's files: the path, the errno, and where a
  ``--resume`` would continue."""
  try:
    latest = ckpt.latest_step()
  except Exception:  # noqa: BLE001  (the same fault may hide the checkpoints too)
    latest = None
  resumable = f" (--resume continues from step {latest})" if latest is not None else ""
  return fail(os.fspath(e.filename or workdir), "--workdir",
              f"a readable and writable file{resumable}",
              os_reason(e))


def _train(config, model_cfg, workdir, mesh, ckpt, resume, train_set, progress,
           allow_config_change, command_argv) -> TrainResult:
  lead = jax.process_index() == 0
  tc = config.train
  latest = ckpt.latest_step()
  cfg_path = os.path.join(workdir, CONFIG_NAME)
  if latest is not None and not resume:
    raise InputError(f"{workdir}: checkpoints: expected a fresh workdir (or --resume), found a "
                     f"run at step {latest}")
  if resume and latest is not None:
    saved, source = saved_config(ckpt, latest, cfg_path)
    if saved is not None:
      check_resume_config(saved, config, source, allow_config_change)

  data = train_set if train_set is not None else pipeline.load_train_data(config, workdir)
  n = data.num_samples
  if max(config.data.K, model_cfg.anchors) > n:
    raise InputError(f"config: data.K: expected at most the {n} training samples (and "
                     f"model.anchors too), found K={config.data.K}, anchors={model_cfg.anchors}")
  spe = pipeline.steps_per_epoch(n, tc.global_batch)
  if spe < 1:
    raise InputError(f"config: train.global_batch: expected at most the {n} training samples, "
                     f"found {tc.global_batch}")
  total = spe * tc.epochs
  tx = optim.optimizer_from_config(tc, spe)
  schedule = optim.schedule_from_config(tc, spe)
  init_key, rng = jax.random.split(jax.random.key(tc.seed))
  state = train_step.init_state(model_cfg, tx, init_key, mesh)
  epoch_start_skipped = 0
  if resume and latest is not None:
    state, rng, meta = ckpt.restore(state)
    if (meta.get("num_samples"), meta.get("steps_per_epoch")) != (n, spe):
      raise InputError(f"{ckpt.directory}: num_samples: expected the resumed run's "
                       f"{meta.get('num_samples')} training samples, found {n} (the data "
                       "changed; start a new workdir)")
    epoch_start_skipped = meta.get("skipped_at_epoch_start", 0)
  start = int(jax.device_get(state.step))
  if start > total:
    # Training cannot run backwards: the resumed state has taken more steps than the run would
    # now have, and exporting it as a shorter run's model would misreport it.
    raise fail(ckpt.directory, "train.epochs",
               f"at least the {-(-start // spe)} epochs the resumed run has reached (step "
               f"{start}, {spe} steps per epoch)", f"{tc.epochs} ({total} steps)")
  # Before anything is written: an unwritable trace directory is refused at the start.
  prof = profiling.StepRange(profiling.parse_step_range(config.log.get("profile_steps")),
                             config.log.get("profile_dir") or os.path.join(workdir, PROFILE_NAME),
                             start, total, enabled=lead)
  events = tensorboard.EventLog(workdir, start, enabled=lead)
  try:
    if lead and not (resume and os.path.exists(cfg_path) and not allow_config_change):
      with io_path(cfg_path):
        write_json(cfg_path, configs.as_plain(config))
    if lead:  # config.json is what a resume compares against; run.json is the provenance
      telemetry.record_start(os.path.join(workdir, RUN_NAME), {
          **run_info(command_argv, config=configs.as_plain(config), seed=tc.seed),
          "started_at_step": start})

    metrics_log = telemetry.MetricsLog(workdir, enabled=lead)
    metrics_log.truncate_after(start)
    bar = telemetry.Progress(total, start, tc.global_batch, enabled=progress and lead)
    mb = microbatches(config)
    _say(lead, f"train: {n} samples, {spe} steps/epoch x {tc.epochs} epochs = {total} steps, "
         f"global batch {tc.global_batch} on {mesh.size} devices ({jax.process_count()} processes"
         + (f", {mb} microbatches per device" if mb > 1 else "") + "), "
            f"K={config.data.K} L={model_cfg.anchors} D={model_cfg.dim} depth={model_cfg.depth} "
            f"{model_cfg.dtype}" + (f"; resumed at step {start}" if start else ""))
    arrays = parallel.put_replicated((data.feats_NxC, data.nbrs_NxM, data.clusters_N), mesh)
    step_fn = train_step.make_train_step(model_cfg, tx, mesh, tc.alpha, config.data.K,
                                         model_cfg.anchors, schedule=schedule, microbatches=mb)
    evaluator = _make_evaluator(config, workdir)

    history, pending, order, order_epoch = [], [], None, None
    every_log, every_ckpt = max(config.log.every_steps, 1), max(config.checkpoint.every_steps, 1)
    t_first, t_plot = None, time.perf_counter()
    for step in range(start, total):
      epoch, i = divmod(step, spe)
      if order_epoch != epoch:
        order, order_epoch = pipeline.epoch_order(n, tc.seed, epoch), epoch
      if i == 0:
        epoch_start_skipped = int(jax.device_get(state.opt_state.skipped))
      local = pipeline.batch_indices(order, i, tc.global_batch, jax.process_index(),
                                     jax.process_count())
      idx = train_step.global_batch_array(local, mesh, tc.global_batch)
      if t_first is None:
        t0 = time.perf_counter()
      bar.exclude(prof.before(step + 1))
      state, m = step_fn(state, arrays, idx, jax.random.fold_in(rng, step))
      bar.exclude(prof.after(step + 1, (state, m)))
      pending.append(m)
      if t_first is None:
        jax.block_until_ready(m)
        t_first = time.perf_counter() - t0
        bar.rate(step + 1)  # throughput intervals start after compilation
      done = step + 1
      ckpt_due = done % every_ckpt == 0 or done == total
      # Also flushed at checkpoints, so a resumed run logs exactly the intervals an uninterrupted
      # one does.
      if done % every_log == 0 or ckpt_due:
        recs = jax.device_get(pending)
        pending = []
        rec = {"kind": "train", "step": done, "epoch": epoch,
               **telemetry.summarize([{k: v.item() for k, v in r.items()} for r in recs]),
               "samples_per_s": bar.rate(done)}
        if not history:
          rec["first_step_s"] = t_first  # compilation included
        history.append(rec)
        metrics_log.write(rec)
        events.write(rec)
        bar.update(done, epoch, tc.epochs, {k: rec[k] for k in ("loss", "lr", "grad_norm")
                                            if k in rec}, rec["samples_per_s"])
      if ckpt_due:
        t0 = time.perf_counter()
        ckpt.save(done, state, rng, {"step": done, "epoch": done // spe,
                                     "step_in_epoch": done % spe, "seed": tc.seed,
                                     "steps_per_epoch": spe, "num_samples": n,
                                     "skipped_at_epoch_start": epoch_start_skipped,
                                     "config": configs.as_plain(config)})
        if lead and time.perf_counter() - t_plot > PLOT_EVERY_S:
          telemetry.plot_curves(metrics_log.path, os.path.join(workdir, telemetry.PLOT_NAME))
          t_plot = time.perf_counter()
        bar.exclude(time.perf_counter() - t0)
      if evaluator is not None and done % spe == 0 and (done // spe) % evaluator.every == 0:
        t0 = time.perf_counter()
        res = evaluator(jax.device_get(state.params), model_cfg)
        bar.exclude(time.perf_counter() - t0)
        rec = {"kind": "eval", "step": done, "epoch": done // spe, **res}
        history.append(rec)
        metrics_log.write(rec)
        events.write(rec)
        _say(lead, f"eval after epoch {done // spe}: {json.dumps(res)}")

    params = jax.device_get(state.params)
    skipped = int(jax.device_get(state.opt_state.skipped))
    if lead:
      telemetry.plot_curves(metrics_log.path, os.path.join(workdir, telemetry.PLOT_NAME))
    check_outcome(params, skipped, skipped - epoch_start_skipped, total, spe)
    if lead:
      with io_path(os.path.join(workdir, export.EXPORT_NAME)):
        export.save_export(os.path.join(workdir, export.EXPORT_NAME), params, model_cfg)
      has_pth = importlib.util.find_spec("torch") is not None
      if has_pth:  # the original's checkpoint format, for PyTorch users (the torch extra)
        with io_path(os.path.join(workdir, "state_dict.pth")):
          save_pth(os.path.join(workdir, "state_dict.pth"), params, model_cfg, tc.epochs,
                   replace=True)
      _say(lead, f"train: done at step {total} ({skipped} skipped); wrote "
              f"{os.path.join(workdir, export.EXPORT_NAME)}" + (" and state_dict.pth" if has_pth
                                                                 else ""))
    return TrainResult(params, model_cfg, total, skipped, workdir, history)
  finally:  # every way out: the event file closed, a trace inside the step range written
    events.close()
    prof.close()


def _say(lead: bool, msg: str) -> None:
  if lead:  # every process runs the loop; one reports
    log.info("%s", msg)


def _make_evaluator(config, workdir):
  """An ``evaluate(params, model_cfg) -> dict`` every ``eval.every_epochs``, or None."""
  ec = config.get("eval")
  if ec is None or not ec.every_epochs:
    return None
  from csa_jax.train import periodic_eval as train_eval
  return train_eval.make_evaluator(config, workdir)
