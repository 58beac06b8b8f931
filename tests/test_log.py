"""The CLI's log lines: ``csa-jax: HH:MM:SS [level: ]message``, one per record."""

import io
import logging
import re
import time


from csa_jax import log


def test_lines_carry_the_prefix_the_time_and_the_level(shown):
  lg = logging.getLogger("csa_jax.somewhere")
  lg.info("train: step %d/%d", 2, 12)
  lg.warning("a %s", "warning")
  lg.error("an error")
  lg.debug("not shown at INFO")
  lines = shown.getvalue().splitlines()
  assert len(lines) == 3
  assert re.fullmatch(r"csa-jax: \d\d:\d\d:\d\d train: step 2/12", lines[0]), lines[0]
  assert re.fullmatch(r"csa-jax: \d\d:\d\d:\d\d warning: a warning", lines[1]), lines[1]
  assert re.fullmatch(r"csa-jax: \d\d:\d\d:\d\d error: an error", lines[2]), lines[2]


def test_the_time_is_the_record_s_local_time(shown):
  created = 1_700_000_000.0 + 3723.4  # not the time the line is formatted
  rec = logging.makeLogRecord({"name": "csa_jax.x", "levelno": logging.INFO,
                               "levelname": "INFO", "msg": "hello", "created": created})
  handler = next(h for h in logging.getLogger(log.ROOT).handlers if getattr(h, "_csa_cli", False))
  want = time.strftime("%H:%M:%S", time.localtime(created))
  assert handler.formatter.format(rec) == f"csa-jax: {want} hello"


def test_setup_again_replaces_its_handler_instead_of_doubling_lines(shown):
  second = io.StringIO()
  log.setup(logging.INFO, second)
  logging.getLogger("csa_jax.x").info("once")
  assert shown.getvalue() == "" and len(second.getvalue().splitlines()) == 1
