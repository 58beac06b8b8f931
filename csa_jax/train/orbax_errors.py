"""What orbax and tensorstore say when a checkpoint write or read fails, in csa_jax's terms.

``os_error_of`` finds the OS error (errno and file) behind the many exception types they raise,
so a full or read-only disk becomes one line naming the path. ``quiet_background_errors`` is for
the CLI: after a failure orbax logs ERROR records with tracebacks from its threads and
tensorstore prints tracebacks from callbacks that complete after orbax closed its event loop,
possibly after the error line was printed; it routes exactly those reports to debug records.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

from csa_jax.errors import short_reason

log = logging.getLogger(__name__)
# tensorstore's message of an OS error: ... Failed writing: "<path>": ... [os_error_code='27']
_TS_ERRNO = re.compile(r"os_error_code='?([0-9]+)")
_TS_PATH = re.compile(r'"(/[^"]+)"')  # the last quoted absolute path is the file that failed


def _frames(tb) -> list[str]:
  out = []
  while tb is not None:
    out.append(tb.tb_frame.f_code.co_filename)
    tb = tb.tb_next
  return out


def _is_background_noise(value, tb, main_thread: bool) -> bool:
  """Whether an exception reported outside the caller's control is orbax's or tensorstore's.

  Two kinds: a tensorstore completion callback into the event loop orbax already closed after a
  failure (``RuntimeError: Event loop is closed``, raised in asyncio's ``call_soon_threadsafe``,
  printed by tensorstore from its own thread), and an exception raised in an orbax thread.
  """
  files = _frames(tb)
  if isinstance(value, RuntimeError) and "Event loop is closed" in str(value) and files and \
      all(os.sep + "asyncio" + os.sep in f for f in files):
    return True
  return not main_thread and any(os.sep + "orbax" + os.sep in f for f in files)


class _AsyncioLogFilter(logging.Filter):
  """Drops asyncio's "exception was never retrieved" records of tensorstore's failed writes: the
  futures orbax left when it stopped at the first failure, collected later."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if "never retrieved" in str(record.msg) and exc is not None and (
        os_error_of(exc) is not None or _is_background_noise(exc, exc.__traceback__, False)):
      log.debug("background error after a checkpoint failure: %s", short_reason(exc))
      return False
    return True


class _OrbaxLogFilter(logging.Filter):
  """Turns orbax's log records (its ERROR records of a failed background write carry a whole
  traceback) into debug records of this module: csa_jax reports the failure in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if os.sep + "orbax" + os.sep not in (record.pathname or ""):
      return True
    log.debug("orbax: %s", record.getMessage(), exc_info=record.exc_info)
    return False


_quiet_lock = threading.Lock()
_quiet_installed = False


def quiet_background_errors() -> None:
  """Routes orbax's and tensorstore's background reports to debug log records (idempotent).

  A failed save or restore makes orbax log an ERROR record with a traceback from its threads,
  and tensorstore print tracebacks (as unraisable exceptions) from callbacks that complete
  after orbax closed its event loop, possibly after the caller has reported the error and while
  the interpreter exits. Nothing else is affected: other exceptions reach the hooks that were
  installed before, and other libraries' records pass.
  """
  global _quiet_installed
  with _quiet_lock:
    if _quiet_installed:
      return
    _quiet_installed = True
  logging.getLogger("absl").addFilter(_OrbaxLogFilter())
  logging.getLogger("asyncio").addFilter(_AsyncioLogFilter())
  prev_sys, prev_thread, prev_unraisable = sys.excepthook, threading.excepthook, \
      sys.unraisablehook

  def sys_hook(etype, value, tb):
    main = threading.current_thread() is threading.main_thread()
    if _is_background_noise(value, tb, main):
      log.debug("background error after a checkpoint failure: %s: %s", etype.__name__, value)
      return
    prev_sys(etype, value, tb)

  def thread_hook(args):
    if _is_background_noise(args.exc_value, args.exc_traceback, False):
      log.debug("background error in %s: %s: %s", getattr(args.thread, "name", "?"),
                args.exc_type.__name__, args.exc_value)
      return
    prev_thread(args)

  def unraisable_hook(u):
    main = threading.current_thread() is threading.main_thread()
    if _is_background_noise(u.exc_value, u.exc_traceback, main):
      log.debug("background error after a checkpoint failure: %s: %s",
                getattr(u.exc_type, "__name__", "?"), u.exc_value)
      return
    prev_unraisable(u)

  sys.excepthook, threading.excepthook = sys_hook, thread_hook
  sys.unraisablehook = unraisable_hook


def os_error_of(e: BaseException) -> tuple[int, str | None] | None:
  """(errno, path) of the OS error behind an orbax/tensorstore exception, or None.

  orbax raises the ``OSError`` of a failed mkdir or rename as is; tensorstore raises
  ``ValueError`` whose message carries ``[os_error_code='N']`` and the file in quotes. The
  exception's causes are searched too.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno:
      return e.errno, e.filename
    m = _TS_ERRNO.search(str(e))
    if m:
      paths = _TS_PATH.findall(str(e))
      return int(m.group(1)), paths[-1] if paths else None
    e = e.__cause__ or e.__context__
  return None
