"""The one logger: ``log = logging.getLogger(__name__)`` in every module, shown by the CLI.

Library code never prints; it logs to ``csa_jax.*`` loggers, which a library user configures (or
silences) like any other. ``csa-jax`` shows INFO and above on stderr, one line each, prefixed
``csa-jax:`` (warnings ``csa-jax: warning:``); ``--quiet`` keeps warnings and errors only,
``--verbose`` adds DEBUG.
"""

from __future__ import annotations

import logging
import sys

ROOT = "csa_jax"


class _Format(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    level = "" if record.levelno < logging.WARNING else record.levelname.lower() + ": "
    return f"csa-jax: {level}{record.getMessage()}"


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
