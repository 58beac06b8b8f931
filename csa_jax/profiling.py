"""``jax.profiler`` traces on request: of a whole command, or of a range of training steps.

``csa-jax --profile DIR <command> ...`` traces the whole command (``trace``); training's
``--config.log.profile_steps=A:B`` traces steps A to B (``StepRange``). Either way the trace is
what ``jax.profiler`` writes: ``DIR/plugins/profile/<session>/<host>.xplane.pb`` (TensorBoard's
profile plugin: ``tensorboard --logdir DIR``), with ``<host>.trace.json.gz`` and
``perfetto_trace.json.gz`` (ui.perfetto.dev) beside it.

The directory is created and checked writable before anything is traced: one ``InputError`` line
when it is not, with the directories this made removed again. A trace that fails to be written
leaves no part of its session folder behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time

import jax

from csa_jax.errors import InputError, fail, one_line
from csa_jax.fileio import missing_dirs, os_reason, remove_if_empty

PLUGIN_DIR = os.path.join("plugins", "profile")
PERFETTO_NAME = "perfetto_trace.json.gz"

log = logging.getLogger(__name__)

_running: Trace | None = None  # the trace this process is taking, if any


def running() -> Trace | None:
  """The trace this process is taking through this module (``--profile`` or a step range), or
  None."""
  return _running


def _reason(e: BaseException) -> str:
  if isinstance(e, OSError) and e.errno:
    return os_reason(e)
  return one_line(str(e)) or type(e).__name__


def _options() -> dict:
  """``start_trace``'s options: device and XLA host activity, no Python function calls.

  JAX's Python tracer (on by default) records every Python call: a profiled command runs about
  five times slower and its trace is ten times larger, which distorts the very timings a trace is
  taken for. A jax without ``ProfileOptions`` traces with its defaults.
  """
  cls = getattr(jax.profiler, "ProfileOptions", None)
  if cls is None:
    return {}
  options = cls()
  options.python_tracer_level = 0
  return {"profiler_options": options}


class Trace:
  """One ``jax.profiler`` trace into ``log_dir``: ``start``, then ``stop`` writes it.

  Args:
    log_dir: the directory TensorBoard is pointed at; the trace goes to its
      ``plugins/profile/<session>/``.
    field: the flag or config key that named ``log_dir``, for the error line.
  """

  def __init__(self, log_dir: str | os.PathLike, field: str):
    self.log_dir = os.path.abspath(os.fspath(log_dir))
    self.field = field
    self.session_dir = None  # where ``stop`` wrote the trace
    self._created: list[str] = []
    self._before: set[str] = set()
    self._started = False

  @property
  def plugin_dir(self) -> str:
    return os.path.join(self.log_dir, PLUGIN_DIR)

  def _error(self, e: BaseException, what: str) -> InputError:
    return fail(self.log_dir, self.field, what, _reason(e))

  def prepare(self) -> None:
    """Creates ``log_dir/plugins/profile`` and checks that a file can be written there.

    Raises:
      InputError: one line naming the directory and the errno; the directories this call made
        are removed again.
    """
    created = missing_dirs(self.plugin_dir)
    try:
      os.makedirs(self.plugin_dir, exist_ok=True)
      fd, probe = tempfile.mkstemp(dir=self.plugin_dir, prefix=".csa_jax-probe-")
      os.close(fd)
      os.remove(probe)
    except OSError as e:
      remove_if_empty(created)
      raise self._error(e, "a writable directory for the profiler trace") from None
    self._created = created or self._created

  def _sessions(self) -> set[str]:
    try:
      return {e.name for e in os.scandir(self.plugin_dir) if e.is_dir(follow_symlinks=False)}
    except OSError:
      return set()

  def start(self) -> None:
    """Starts tracing (``prepare`` first).

    Raises:
      InputError: the directory is not writable, or another trace is running in this process.
    """
    global _running
    self.prepare()
    self._before = self._sessions()
    try:
      jax.profiler.start_trace(self.log_dir, create_perfetto_trace=True, **_options())
    except RuntimeError as e:
      self.discard()
      raise self._error(e, "no other profiler trace running in this process") from None
    self._started = True
    _running = self

  def stop(self) -> str:
    """Stops and writes the trace (the caller has waited for the device work it must hold).

    Returns:
      The session folder written (``log_dir/plugins/profile/<session>``).

    Raises:
      InputError: the trace could not be written; its partial session folder is removed.
    """
    global _running
    if not self._started:
      return self.session_dir
    self._started = False
    _running = None if _running is self else _running
    try:
      jax.profiler.stop_trace()
    except Exception as e:  # noqa: BLE001  (XLA reports a failed write as a RuntimeError)
      self.discard()
      raise self._error(e, "a writable directory for the profiler trace") from None
    new = sorted(self._sessions() - self._before)
    # Session folders are named by a time to the second: a trace named as an earlier one in
    # this directory is written into that folder, which is then not new.
    self.session_dir = os.path.join(self.plugin_dir, new[-1]) if new else self._latest()
    return self.session_dir

  def _latest(self) -> str | None:
    names = sorted(self._sessions())
    return os.path.join(self.plugin_dir, names[-1]) if names else None

  def discard(self) -> None:
    """Removes what this trace wrote: new session folders, and directories it made while
    still empty."""
    for name in self._sessions() - self._before:
      shutil.rmtree(os.path.join(self.plugin_dir, name), ignore_errors=True)
    remove_if_empty(self._created)


def describe(t: Trace) -> str:
  """Where a written trace is and what opens it, for the log line."""
  perfetto = os.path.join(t.session_dir or "", PERFETTO_NAME)
  out = f"{t.session_dir}; open it with tensorboard --logdir {t.log_dir} (Profile tab)"
  if os.path.exists(perfetto):
    out += f" or {PERFETTO_NAME} at ui.perfetto.dev"
  return out


@contextlib.contextmanager
def trace(log_dir: str | os.PathLike, field: str = "--profile"):
  """Traces the body into ``log_dir``; the trace is written however the body ends.

  Args:
    log_dir: where the trace goes (``log_dir/plugins/profile/<session>/``).
    field: the flag that named it, for the error line.

  Yields:
    The ``Trace``.

  Raises:
    InputError: ``log_dir`` is not writable (before the body runs), or the trace could not be
      written after a body that succeeded. After a body that raised, a failed write is one
      warning and the body's exception goes on.
  """
  t = Trace(log_dir, field)
  t.start()
  try:
    yield t
  except BaseException:
    try:
      t.stop()
      log.info("profile: trace of the command written to %s", describe(t))
    except InputError as e:
      log.warning("profile: %s", e)
    raise
  t.stop()
  log.info("profile: trace of the command written to %s", describe(t))


def parse_step_range(text: str | None, field: str = "log.profile_steps") -> tuple[int, int] | None:
  """``"A:B"`` (steps A to B, both traced) or ``"A"`` (step A alone) as ``(A, B)``.

  Steps are numbered as the progress line and ``metrics.jsonl`` number them: step 1 is the
  first update (it includes compilation).

  Args:
    text: the config value; '' or None for no trace.
    field: the config key, for the error line.

  Returns:
    (A, B) with 1 <= A <= B, or None.

  Raises:
    InputError: anything else, in one line naming the key.
  """
  if text is None or not str(text).strip():
    return None
  parts = str(text).strip().split(":")
  try:
    if len(parts) > 2:
      raise ValueError
    a = int(parts[0])
    b = int(parts[1]) if len(parts) == 2 else a
  except ValueError:
    a, b = 0, -1
  if not 1 <= a <= b:
    raise fail("config", field, "A:B, the first and last step to trace (1 <= A <= B), or '' for "
               "none", repr(text))
  return a, b


class StepRange:
  """Traces training steps A to B (``log.profile_steps``) into ``log.profile_dir``.

  The loop calls ``before(step)`` ahead of each step and ``after(step, outputs)`` once the
  step is dispatched (steps numbered from 1); ``close()`` on every way out. Only process 0
  traces. Skipped, with one line, when a resumed run starts past B, when the run ends before
  A, or when the whole command is already traced (``csa-jax --profile``).

  Args:
    steps: (A, B) from ``parse_step_range``, or None.
    log_dir: the trace directory.
    start_step: the step this call starts at (steps ``start_step + 1`` on are run).
    total: the run's last step.
    enabled: trace at all (False on every process but 0).
  """

  def __init__(self, steps, log_dir: str, start_step: int, total: int, enabled: bool = True):
    self.steps, self.total = steps, total
    self.trace = None
    self._first = None
    if steps is None or not enabled:
      return
    a, b = steps
    if b <= start_step:
      log.info("profile: log.profile_steps %d:%d: before step %d, where this run resumes; "
               "nothing traced", a, b, start_step + 1)
    elif a > total:
      log.warning("profile: log.profile_steps %d:%d: past the run's last step %d; nothing "
                  "traced", a, b, total)
    elif running() is not None:
      log.warning("profile: log.profile_steps %d:%d: ignored, the whole command is traced "
                  "(--profile %s)", a, b, running().log_dir)
    else:
      self.trace = Trace(log_dir, "log.profile_dir")
      self.trace.prepare()  # an unwritable directory is refused before the first step

  def before(self, step: int) -> float:
    """Starts the trace ahead of step ``step`` when it is the first traced one.

    Returns:
      The seconds it took (not training time).
    """
    if self.trace is None or self.trace._started or self.trace.session_dir:  # pylint: disable=protected-access
      return 0.0
    a, b = self.steps
    if not a <= step <= b:
      return 0.0
    t0 = time.perf_counter()
    try:
      self.trace.start()
    except InputError as e:  # another trace (a library user's), or the directory went away
      log.warning("profile: %s; training goes on without the trace", e)
      self.trace = None
      return time.perf_counter() - t0
    self._first = step
    log.info("profile: tracing steps %d to %d", step, min(b, self.total))
    return time.perf_counter() - t0

  def after(self, step: int, outputs) -> float:
    """Writes the trace after step ``step`` when it is the last traced one (or the run's last),
    once ``outputs`` are computed; a failed write is one warning and training goes on.

    Returns:
      The seconds writing the trace took (not training time).
    """
    if self.trace is None or not self.trace._started:  # pylint: disable=protected-access
      return 0.0
    if step < min(self.steps[1], self.total):
      return 0.0
    jax.block_until_ready(outputs)  # the trace must hold the last step's device work
    t0 = time.perf_counter()
    self._stop(step)
    return time.perf_counter() - t0

  def _stop(self, last: int | None) -> None:
    steps = f"steps {self._first} to {last}" if last else f"steps from {self._first} on"
    try:
      self.trace.stop()
      log.info("profile: trace of %s written to %s", steps, describe(self.trace))
    except InputError as e:
      log.warning("profile: %s; training goes on without the trace", e)

  def close(self) -> None:
    """Writes a trace still running (the run stopped inside the range: an error, an interrupt)
    and removes the directories made for a trace that never started."""
    if self.trace is None:
      return
    if self.trace._started:  # pylint: disable=protected-access
      self._stop(None)
    elif not self.trace.session_dir:
      self.trace.discard()
