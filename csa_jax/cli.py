"""``csa-jax <command> ...``: a thin dispatcher over library functions.

Each command lives in its own module exposing ``main(argv) -> int``; it is imported only when
run, so ``csa-jax --help`` stays fast and a command's optional dependencies stay optional.
Bad input (``InputError``) becomes one line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

from csa_jax.errors import InputError

COMMANDS = {
    "smoke": ("csa_jax.smoke", "re-rank a generated retrieval set with a fresh model (shapes, "
              "timings; no quality claim)"),
    "demo": ("csa_jax.demo", "synthetic landmark benchmark: train a small CSA, re-rank, compare"),
    "train": ("csa_jax.train_cmd", "train CSA from a config (configs/*.py)"),
    "eval": ("csa_jax.eval_cmd", "revisited mAP of first-round search, optionally CSA re-ranked"),
    "convert-data": ("csa_jax.data_cmd", "turn the original pickle layout into .npy/.json"),
    "bench": ("csa_jax.bench", "csa_jax vs PyTorch throughput, same weights"),
    "experiment": ("csa_jax.experiments", "the paper's studies and re-ranking baselines"),
}


def _usage() -> str:
  lines = ["usage: csa-jax <command> [args...]", "", "commands:"]
  for name, (mod, helptext) in COMMANDS.items():
    if importlib.util.find_spec(mod) is not None:
      lines.append(f"  {name:<13} {helptext}")
  return "\n".join(lines)


class _Format(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    level = "" if record.levelno < logging.WARNING else record.levelname.lower() + ": "
    return f"csa-jax: {level}{record.getMessage()}"


def setup_logging(level: int = logging.INFO) -> None:
  """The library logs to the ``csa_jax`` logger; the CLI shows it on stderr, one line each."""
  logger = logging.getLogger("csa_jax")
  if not any(getattr(h, "_csa_cli", False) for h in logger.handlers):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    handler._csa_cli = True
    logger.addHandler(handler)
  logger.setLevel(level)
  logger.propagate = False  # other libraries may configure the root logger differently


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS or importlib.util.find_spec(COMMANDS[name][0]) is None:
    print(f"csa-jax: unknown command {name!r}\n{_usage()}", file=sys.stderr)
    return 2
  setup_logging()
  try:
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)
  except InputError as e:
    print(f"csa-jax {name}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"csa-jax {name}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
