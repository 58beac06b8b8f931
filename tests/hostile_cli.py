"""Runs ``csa-jax`` in a subprocess the way an attacker or a clumsy user would meet it.

Each case runs in its own process under an address-space limit and a timeout, so a crafted file
that would exhaust memory, loop for minutes or crash the interpreter fails the case instead of
the test session. ``expect_input_error`` is the contract of every bad input: exit code 2, one
``csa-jax <command>: error: ...`` line naming what is wrong, no traceback, no signal death.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys

MEM_LIMIT_MB = 3072  # far above what any case legitimately needs (the tiny models use < 1 GB)
TIMEOUT_S = 120


@dataclasses.dataclass
class CliResult:
  args: list
  returncode: int
  stdout: str
  stderr: str

  def __str__(self) -> str:
    return (f"csa-jax {' '.join(map(str, self.args))}\nexit {self.returncode}\n"
            f"--- stderr (tail) ---\n{self.stderr[-3000:]}")


# Sets the limits, then becomes the real command: no preexec_fn, whose fork() in a test process
# that has JAX's threads running is unsafe (and warned about). argv: memory MiB, file-size limit
# in bytes (0: none), 1 to drop root's permission overrides (0: keep), then the command.
_TRAMPOLINE = ("import ctypes, os, resource, sys; lim = int(sys.argv[1]) * 2**20; "
               "resource.setrlimit(resource.RLIMIT_AS, (lim, lim)); "
               "resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); "
               "fs = int(sys.argv[2]); "
               "fs and resource.setrlimit(resource.RLIMIT_FSIZE, (fs, fs)); "
               # prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH): root then meets
               # file modes like any user after the exec.
               "[ctypes.CDLL(None).prctl(24, c, 0, 0, 0) for c in (1, 2) "
               " if sys.argv[3] == '1' and os.geteuid() == 0]; "
               "os.execv(sys.executable, [sys.executable] + sys.argv[4:])")


def run_cli(args, cwd, *, mem_mb: int = MEM_LIMIT_MB, timeout: float = TIMEOUT_S,
            env: dict | None = None, fsize_bytes: int = 0,
            honour_modes: bool = False) -> CliResult:
  """``python -m csa_jax.cli.main *args`` in ``cwd`` under a memory limit and a timeout.

  fsize_bytes: the largest file the command may write (``RLIMIT_FSIZE``: a write past it fails
    with EFBIG, as on a full disk); 0 for no limit.
  honour_modes: make a read-only file or directory read-only even when the tests run as root
    (the command runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH).
  """
  e = dict(os.environ)
  e.pop("XLA_FLAGS", None)  # one CPU device: the cases test input handling, not sharding
  e.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(env or {}))
  args = [str(a) for a in args]
  try:
    p = subprocess.run([sys.executable, "-c", _TRAMPOLINE, str(mem_mb), str(int(fsize_bytes)),
                        "1" if honour_modes else "0", "-m", "csa_jax.cli.main", *args],
                       cwd=str(cwd), env=e, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
  except subprocess.TimeoutExpired as ex:
    raise AssertionError(f"csa-jax {' '.join(args)}: still running after {timeout} s\n"
                         f"{(ex.stderr or b'')[-2000:]!r}") from None
  return CliResult(args, p.returncode, p.stdout, p.stderr)


def expect_input_error(res: CliResult, *needles: str) -> str:
  """Asserts the one-line error contract; returns the error line.

  needles: substrings the error line must contain (the file, the field, ...).
  """
  assert res.returncode >= 0, f"killed by signal {-res.returncode}\n{res}"
  assert "Traceback" not in res.stderr, f"traceback\n{res}"
  assert res.returncode == 2, f"expected exit 2\n{res}"
  errors = [l for l in res.stderr.splitlines() if ": error: " in l]
  assert len(errors) == 1, f"expected exactly one error line\n{res}"
  line = errors[0]
  assert line.startswith(f"csa-jax {res.args[0]}: error: "), f"malformed error line\n{res}"
  last = [l for l in res.stderr.splitlines() if l.strip()][-1]
  assert last == line, f"the error must be the last thing said\n{res}"
  for n in needles:
    assert n in line, f"error line lacks {n!r}: {line}\n{res}"
  return line


def expect_ok(res: CliResult) -> None:
  assert res.returncode == 0, f"expected exit 0\n{res}"
  assert "Traceback" not in res.stderr, f"traceback\n{res}"


def leftover_temp_files(root) -> list[str]:
  """Temporary files of an atomic write anywhere under ``root``.

  Matches every ``.<name>.*.tmp``: csa_jax's own ``.<name>.csa_jax-<hex>.tmp`` (``fileio``) and
  anything else so named, so a case that plants a user's ``.notes.tmp`` must not call this.
  """
  return sorted(str(p) for p in pathlib.Path(root).rglob(".*.tmp"))


def tree_snapshot(root) -> dict[str, tuple]:
  """Every entry under ``root`` (relative path -> kind, size, SHA-256 / link target).

  Taken before and after a case: ``assert_tree_unchanged`` then proves that no input file was
  lost or changed and no stray file was left.
  """
  out = {}
  root = pathlib.Path(root)
  for p in sorted(root.rglob("*")):
    rel = str(p.relative_to(root))
    if p.is_symlink():
      out[rel] = ("link", os.readlink(p))
    elif p.is_dir():
      out[rel] = ("dir",)
    elif p.is_file():
      out[rel] = ("file", p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    else:
      out[rel] = ("special",)
  return out


def assert_tree_unchanged(before: dict, root, new_ok=()) -> None:
  """Asserts ``root`` holds exactly what ``before`` recorded, plus the paths in ``new_ok``."""
  after = tree_snapshot(root)
  changed = sorted(k for k in before if k in after and after[k] != before[k])
  lost = sorted(k for k in before if k not in after)
  stray = sorted(k for k in after if k not in before and k not in set(map(str, new_ok)))
  assert not (changed or lost or stray), f"changed {changed}, lost {lost}, stray {stray}"


TINY_CONFIG = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "tiny.py")


def fast_compile_env(cache_dir) -> dict:
  """Environment for training cases that all run the same tiny program: compiled once, at low
  optimisation, and shared through a compilation cache."""
  return {"XLA_FLAGS": "--xla_backend_optimization_level=0",
          "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def train_cli(cwd, env, workdir, *extra, config=TINY_CONFIG, **kw) -> CliResult:
  """``csa-jax train --config CONFIG --workdir WORKDIR --no-progress *extra`` (``run_cli``)."""
  return run_cli(["train", "--config", config, "--workdir", workdir, "--no-progress", *extra],
                 cwd=cwd, env=env, **kw)


def finished_tiny_run(tmp, env) -> str:
  """A finished tiny run in ``tmp/run`` (2 epochs, 12 steps, checkpoints at 4, 8 and 12; 2 kept:
  8 and 12); returns its workdir."""
  workdir = str(pathlib.Path(tmp) / "run")
  expect_ok(train_cli(tmp, env, workdir))
  return workdir
