"""TensorBoard event files of a training run: ``<workdir>/tensorboard/events.out.tfevents.*``.

Every record ``metrics.jsonl`` gets is also written as TensorBoard scalars at its step: a train
record's fields as ``train/<field>`` (``train/loss``, ``train/contrastive``, ``train/mse``,
``train/grad_norm``, ``train/lr``, ``train/skipped``, ``train/samples_per_s``,
``train/first_step_s``), an evaluation's mAP as ``eval/<dataset>/<round>/<difficulty>``
(``eval/roxford5k/csa/medium``). ``tensorboard --logdir <workdir>`` shows them (a folder of
several workdirs shows each as a run).

The events are written by tensorboardX's synchronous event writer from the training loop itself,
flushed after each record: no background thread outlives a failure or an interrupt, and an I/O
error (a full disk, an unwritable directory) is one warning line that turns the event files off
for the rest of the run, which goes on (``metrics.jsonl`` keeps every record). Without
tensorboardX one INFO line says so and training writes no event files.

A resumed run opens a new event file that starts with a ``SessionLog.START`` event at its first
step: TensorBoard's event reader then drops the steps after the checkpoint that a killed run had
written, as ``metrics.jsonl`` drops their lines, so each step shows once.
"""

from __future__ import annotations

import logging
import os
import re
import time

from csa_jax.fileio import os_reason

DIR_NAME = "tensorboard"
SKIPPED_KEYS = ("kind", "step", "epoch", "K")  # record fields that are not curves
_NOT_IN_TAGS = re.compile(r"[^-/\w.]")  # what TensorBoard's tag rules replace by '_'

log = logging.getLogger(__name__)


def scalars(record: dict) -> dict[str, float]:
  """The TensorBoard tags and values of one ``metrics.jsonl`` record.

  Args:
    record: a record of kind 'train' (flat fields) or 'eval' ({dataset: {round: {difficulty:
      mAP}, 'K': int}}).

  Returns:
    {tag: value}: ``<kind>/<field>`` for each numeric field, nested dicts joined with '/';
    booleans, strings and the bookkeeping fields (step, epoch, K) left out.
  """
  out = {}

  def walk(prefix: str, d: dict) -> None:
    for k, v in d.items():
      if k in SKIPPED_KEYS:
        continue
      if isinstance(v, dict):
        walk(f"{prefix}/{k}", v)
      elif isinstance(v, (int, float)) and not isinstance(v, bool):
        out[_NOT_IN_TAGS.sub("_", f"{prefix}/{k}").lstrip("/")] = float(v)

  walk(str(record.get("kind", "train")), record)
  return out


class EventLog:
  """Appends a run's scalars to one TensorBoard event file (process 0 only).

  The file is created at the first ``write``, so a start that fails before its first metrics
  interval leaves no ``tensorboard/`` behind.

  Args:
    workdir: the run's directory; the events go to ``<workdir>/tensorboard``.
    start_step: the step this call starts at (a resumed run's checkpoint step, else 0).
    enabled: write at all (False on every process but 0).
  """

  def __init__(self, workdir: str, start_step: int, enabled: bool = True):
    self.dir = os.path.join(workdir, DIR_NAME)
    self.start_step = start_step
    self.path = None
    self._writer = None
    self._proto = None
    self.enabled = enabled and self._load()

  def _load(self) -> bool:
    try:
      # Imported here: tensorboardX imports torch when torch is installed, a cost only a run
      # that writes events should pay.
      from tensorboardX.event_file_writer import EventsWriter
      from tensorboardX.proto.event_pb2 import Event, SessionLog
      from tensorboardX.proto.summary_pb2 import Summary
    except ImportError:
      log.info("tensorboard: event files off: tensorboardX, a csa_jax dependency, is not "
               "installed (pip install tensorboardX; metrics.jsonl has every record)")
      return False
    self._proto = (EventsWriter, Event, SessionLog, Summary)
    return True

  def _open(self) -> None:
    events_writer, event, session_log, _ = self._proto
    os.makedirs(self.dir, exist_ok=True)
    # The pid in the name: two starts within one second must not share (and truncate) a file.
    self._writer = events_writer(os.path.join(self.dir, "events"), f".{os.getpid()}")
    self.path = getattr(self._writer, "_file_name", self.dir)  # for the warning line only
    # TensorBoard drops the events of steps >= this one written before it (by a killed run
    # past its last checkpoint); it ignores the first START of a run, so a fresh run's is moot.
    self._writer.write_event(event(wall_time=time.time(), step=self.start_step + 1,
                                   session_log=session_log(status=session_log.START)))

  def write(self, record: dict) -> None:
    """Writes a record's scalars at ``record['step']`` and flushes them to the file.

    Args:
      record: a ``metrics.jsonl`` record (see ``scalars``).
    """
    if not self.enabled:
      return
    _, event, _, summary = self._proto
    # NaN and inf stay as they are (an interval whose steps were all skipped has a NaN loss):
    # TensorBoard shows them as such.
    values = [summary.Value(tag=tag, simple_value=x) for tag, x in scalars(record).items()]
    try:
      if self._writer is None:
        self._open()
      self._writer.write_event(event(wall_time=time.time(), step=int(record["step"]),
                                     summary=summary(value=values)))
      self._writer.flush()
    except OSError as e:
      self._fail(e, record.get("step"))

  def _fail(self, e: OSError, step) -> None:
    where = os.fspath(e.filename) if e.filename else self.path or self.dir
    reason = os_reason(e)
    log.warning("tensorboard: %s: event files off from step %s on: %s (metrics.jsonl has every "
                "record)", where, step, reason)
    self.enabled = False
    self._close_quietly()

  def _close_quietly(self) -> None:
    writer, self._writer = self._writer, None
    if writer is not None:
      try:
        writer.close()
      except OSError as e:
        log.debug("tensorboard: %s: closing failed: %s", self.path, e)

  def close(self) -> None:
    """Closes the event file; never raises (every record was flushed when written)."""
    self._close_quietly()
