"""``csa-jax <command> ...``: a thin dispatcher over library functions.

Each command lives in its own module exposing ``main(argv) -> int``; it is imported only when
run, so ``csa-jax --help`` stays fast and a command's optional dependencies stay optional.
Bad input (``InputError``) becomes one line on stderr and exit code 2, with no traceback; control
characters and line separators in it are escaped (``errors.one_line``), so it stays one line.
Compiled programs are kept for the next process (``compile_cache``; ``--no-compile-cache`` turns
that off for one command). ``csa-jax --version`` (``-V``) prints csa_jax's and its libraries'
versions and the devices.
``csa-jax --profile DIR <command> ...`` runs the command inside a ``jax.profiler`` trace written to
``DIR/plugins/profile/<session>/`` (``csa_jax.profiling``; for TensorBoard and Perfetto).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys

from csa_jax import compile_cache, log
from csa_jax.errors import InputError, fail, one_line

COMMANDS = {
    "smoke": ("csa_jax.cli.smoke", "re-rank a generated retrieval set with a fresh model (shapes, "
              "timings; no quality claim)"),
    "demo": ("csa_jax.cli.demo",
             "synthetic landmark benchmark: train a small CSA, re-rank, compare"),
    "train": ("csa_jax.cli.train", "train CSA from a config (configs/*.py)"),
    "eval": ("csa_jax.cli.eval", "revisited mAP of first-round search, optionally CSA re-ranked"),
    "rerank": ("csa_jax.cli.rerank",
               "CSA re-ranking of your own queries and database (no ground truth)"),
    "convert-data": ("csa_jax.cli.convert_data",
                     "turn the original pickle layout into .npy/.json or a TFDS copy"),
    "convert": ("csa_jax.cli.convert",
                "a trained model from one weights format to another (.pth, .npz, .safetensors)"),
    "bench": ("csa_jax.cli.bench", "csa_jax vs PyTorch throughput, same weights"),
    "experiment": ("csa_jax.cli.experiment", "the paper's studies and re-ranking baselines"),
}


# What a multi-process training is started with: jax.distributed must come before the trace.
_MULTI_PROCESS = ("--distributed", "--coordinator-address", "--num-processes", "--process-id",
                  "--coordinator_address", "--num_processes", "--process_id")


def _usage() -> str:
  lines = ["usage: csa-jax [--quiet|--verbose] [--no-compile-cache] [--profile DIR] <command> "
           "[args...]",
           "       csa-jax --version", "", "commands:"]
  for name, (mod, helptext) in COMMANDS.items():
    if importlib.util.find_spec(mod) is not None:
      lines.append(f"  {name:<13} {helptext}")
  lines += ["", "options before the command:",
            "  --quiet, --verbose  warnings and errors only / debug lines too",
            "  --no-compile-cache  do not keep compiled programs for the next run",
            "  --profile DIR       trace the whole command with jax.profiler into",
            "                      DIR/plugins/profile/<session>/ (tensorboard --logdir DIR, or",
            "                      its perfetto_trace.json.gz at ui.perfetto.dev); for training",
            "                      steps alone: train --config.log.profile_steps=A:B"]
  return "\n".join(lines)


def _pop_profile(argv: list[str]) -> tuple[str | None, list[str]]:
  """``--profile DIR`` (or ``--profile=DIR``) among the options before the command, and argv
  without it; a command's own arguments are never taken."""
  for i, a in enumerate(argv):
    if not a.startswith("-"):
      break  # the command
    if a == "--profile":
      if i + 1 >= len(argv) or not argv[i + 1].strip():
        raise fail("command line", "--profile", "a directory for the trace (--profile DIR)",
                   "none")
      return argv[i + 1], argv[:i] + argv[i + 2:]
    if a.startswith("--profile="):
      if not a.split("=", 1)[1].strip():
        raise fail("command line", "--profile", "a directory for the trace (--profile DIR)",
                   "none")
      return a.split("=", 1)[1], argv[:i] + argv[i + 1:]
  return None, argv


def _profiled(profile_dir: str | None, name: str, rest: list[str]):
  """The context the command runs in: a ``jax.profiler`` trace into ``profile_dir``, if any."""
  if profile_dir is None:
    return contextlib.nullcontext()
  if name == "train" and (any(a.split("=")[0] in _MULTI_PROCESS for a in rest)
                          or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    raise fail("command line", "--profile", "a single-process command (trace a multi-process "
               "training's steps with --config.log.profile_steps=A:B)", "csa-jax train " +
               " ".join(a for a in rest if a.split("=")[0] in _MULTI_PROCESS))
  from csa_jax import profiling  # noqa: PLC0415  (imports jax: only when asked)
  return profiling.trace(profile_dir, "--profile")


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return 0
  level = logging.INFO
  for flag, lvl in (("--quiet", logging.WARNING), ("--verbose", logging.DEBUG)):
    if flag in argv:
      argv.remove(flag)
      level = lvl
  try:
    profile_dir, argv = _pop_profile(argv)
  except InputError as e:
    print(f"csa-jax: error: {one_line(str(e))}", file=sys.stderr)
    return 2
  use_cache = "--no-compile-cache" not in argv
  if not use_cache:
    argv.remove("--no-compile-cache")
  if not argv:
    print(_usage())
    return 0
  if argv[0] in ("-V", "--version"):
    from csa_jax.run_info import version_lines  # noqa: PLC0415  (imports jax: only when asked)
    print(version_lines())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS or importlib.util.find_spec(COMMANDS[name][0]) is None:
    print(f"csa-jax: unknown command {name!r}\n{_usage()}", file=sys.stderr)
    return 2
  log.setup(level)
  # orbax/tensorstore report a failed checkpoint write again from their threads, possibly after
  # the error line: those reports become debug records, so the error stays the last word.
  from csa_jax.train.orbax_errors import quiet_background_errors  # noqa: PLC0415
  quiet_background_errors()
  if use_cache:  # compiled programs kept for the next process (compile_cache)
    compile_cache.enable(compile_cache.default_dir())
  try:
    module = importlib.import_module(COMMANDS[name][0])
    with _profiled(profile_dir, name, rest):
      return int(module.main(rest) or 0)
  except InputError as e:
    # one_line again: an InputError built without ``fail`` may quote raw user text too.
    print(f"csa-jax {name}: error: {one_line(str(e))}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"csa-jax {name}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
