"""The one logger: ``log = logging.getLogger(__name__)`` in every module, shown by the CLI.

Library code never prints; it logs to ``csa_jax.*`` loggers, which a library user configures (or
silences) like any other. ``csa-jax`` shows INFO and above on stderr, one line each, prefixed
``csa-jax:`` and the local time (``csa-jax: 23:50:01 train: step ...``; warnings ``csa-jax:
23:50:01 warning: ...``), so a long run's log says when each line was written; ``--quiet`` keeps
warnings and errors only, ``--verbose`` adds DEBUG. The one error line a failed command ends with
is printed by the CLI itself, without a time.
"""

from __future__ import annotations

import logging
import sys

ROOT = "csa_jax"


TIME_FORMAT = "%H:%M:%S"  # the record's local time, after the prefix


class _Format(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    level = "" if record.levelno < logging.WARNING else record.levelname.lower() + ": "
    return f"csa-jax: {self.formatTime(record, TIME_FORMAT)} {level}{record.getMessage()}"


def setup(level: int = logging.INFO, stream=None) -> None:
  """Shows ``csa_jax`` log records at ``level`` and above on ``stream`` (default stderr).

  Args:
    level: a ``logging`` level.
    stream: where the lines go; the current ``sys.stderr`` when None.
  """
  logger = logging.getLogger(ROOT)
  for h in [h for h in logger.handlers if getattr(h, "_csa_cli", False)]:
    logger.removeHandler(h)
  handler = logging.StreamHandler(stream or sys.stderr)
  handler.setFormatter(_Format())
  handler._csa_cli = True  # pylint: disable=protected-access
  logger.addHandler(handler)
  logger.setLevel(level)
  logger.propagate = False  # other libraries may configure the root logger differently
