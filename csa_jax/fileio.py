"""Atomic writes, and the output checks every command makes before any work.

Atomic writes: a crashed or failed command never leaves a half-written output behind. Outputs are
written to a temporary file beside the target, ``.<name>.csa_jax-<12 hex digits>.tmp``, and
renamed onto it only when complete. A process killed between the two leaves the temporary file;
``remove_stale_temps`` deletes such leftovers on the next run, and only those: the ``csa_jax-``
tag and the exact shape of the name keep a user's ``.notes.tmp`` or ``.draft.docx.tmp`` out of
its reach. Written files get the permissions the umask gives any new file (a temporary file is
private, 0600, while it is written).

Output checks: ``check_output_path`` (the path can be written) and ``check_distinct`` (no output
is an input, or the same file as another output, by resolved path and by inode). Failure
bookkeeping: ``missing_dirs`` / ``remove_if_empty`` (a failed start removes only the empty
directories it made), ``errno_text`` and ``io_path`` (an OSError said in one line, with its file).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from typing import Any, Iterable, Iterator

import numpy as np

from csa_jax.errors import fail

TEMP_TAG = ".csa_jax-"
TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"\..+" + re.escape(TEMP_TAG) + r"[0-9a-f]{12}" + re.escape(TEMP_SUFFIX))
# Before the csa_jax- tag, temporary files were ``.<name>.<random>.tmp`` (tempfile.mkstemp). A
# workdir left by such a version is still cleaned, but only of the temporaries of the files a
# training run writes there: names csa_jax owns in a workdir, never a user's.
LEGACY_TEMP_TARGETS = frozenset({"state_dict.npz", "state_dict.pth", "config.json", "run.json",
                                 "metrics.jsonl", "training_curves.png"})
_LEGACY_TEMP_RE = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{6,}" + re.escape(TEMP_SUFFIX))


def is_temp_name(name: str) -> bool:
  """Whether the file name ``name`` is one of csa_jax's temporary files (see the module doc)."""
  if _TEMP_RE.fullmatch(name):
    return True
  m = _LEGACY_TEMP_RE.fullmatch(name)
  return bool(m) and m.group("name") in LEGACY_TEMP_TARGETS


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _new_temp(path: str) -> str:
  """Creates, empty and private, the temporary file for ``path`` (its directory made first)."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  base = "." + os.path.basename(path) + TEMP_TAG
  for _ in range(100):
    tmp = os.path.join(d, base + secrets.token_hex(6) + TEMP_SUFFIX)
    try:
      # O_EXCL: never opens an existing file or follows a planted symlink.
      fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
      continue
    os.close(fd)
    return tmp
  raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside ``path``; renames it onto ``path`` only if the body succeeds."""
  path = os.fspath(path)
  tmp = _new_temp(path)
  try:
    yield tmp
    if os.path.isfile(tmp):
      os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def atomic_paths(paths) -> Iterator[list[str]]:
  """``atomic_path`` for several files that belong together: all of them or none.

  Yields one temporary path per target; only when the body has written them all are they renamed
  onto their targets. If the body fails, no target is touched; if a rename fails, the targets
  already renamed are removed again (they are new results of this call).
  """
  paths = [os.fspath(p) for p in paths]
  with contextlib.ExitStack() as stack:
    tmps = []
    for p in paths:
      tmp = _new_temp(p)
      stack.callback(_remove_if_exists, tmp)
      tmps.append(tmp)
    yield tmps
    done = []
    try:
      for tmp, p in zip(tmps, paths):
        if os.path.isfile(tmp):
          os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
        done.append(p)
    except BaseException:
      for p in done:
        _remove_if_exists(p)
      raise


def _remove_if_exists(path: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(path)


def remove_stale_temps(directory: str | os.PathLike) -> list[str]:
  """Deletes the temporary files that killed atomic writes left in ``directory``.

  Only files named as ``is_temp_name`` says, and only regular files (never a directory or a
  symlink that happens to carry such a name). Only call it on a directory this process owns (a
  workdir under its lock): a concurrent writer's temporary file looks the same.

  Args:
    directory: the directory to clean (not its subdirectories).

  Returns:
    The paths removed.
  """
  removed = []
  try:
    entries = list(os.scandir(os.fspath(directory)))
  except OSError:
    return removed
  for e in entries:
    if not is_temp_name(e.name):
      continue
    with contextlib.suppress(OSError):
      if e.is_file(follow_symlinks=False):
        os.remove(e.path)
        removed.append(e.path)
  return removed


def errno_text(code: int) -> str:
  """An errno as an error line says it: ``[Errno 28] No space left on device (ENOSPC)``."""
  name = errno.errorcode.get(code)
  return f"[Errno {code}] {os.strerror(code)}" + (f" ({name})" if name else "")


def os_reason(e: OSError) -> str:
  """An ``OSError`` for the found part of an error line: ``errno_text`` when it has an errno,
  else its message, else its type."""
  return errno_text(e.errno) if e.errno else str(e) or type(e).__name__


@contextlib.contextmanager
def io_path(path: str):
  """Gives an ``OSError`` raised in the body without a file name (a failed ``write`` to an open
  file) the name ``path``, so the one error line can say which file failed."""
  try:
    yield
  except OSError as e:
    if e.filename is None and e.errno:
      raise OSError(e.errno, e.strerror or os.strerror(e.errno), os.fspath(path)) from None
    raise


def missing_dirs(path: str) -> list[str]:
  """The directories ``os.makedirs(path)`` would create, deepest first (what a failed start may
  remove again: only those, and only while empty)."""
  out, p = [], os.path.abspath(os.fspath(path))
  while not os.path.lexists(p) and os.path.dirname(p) != p:
    out.append(p)
    p = os.path.dirname(p)
  return out


def remove_if_empty(dirs) -> None:
  """``rmdir`` each of ``dirs`` in order, stopping at the first that is not empty or gone: never
  anything but an empty directory."""
  for d in dirs:
    try:
      os.rmdir(d)
    except OSError:
      return


def check_output_path(path: str | os.PathLike, field: str = "--out") -> str:
  """Fails now, before any compute, if ``path`` could not be written later.

  Args:
    path: the output file a command will write at its end.
    field: the flag or config key that named it (for the error line).

  Returns:
    The path, absolute.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.isdir(path):
    raise fail(path, field, "a file path", "a directory")
  d = os.path.dirname(path)
  probe = d
  while not os.path.exists(probe):  # the first existing ancestor decides
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise fail(path, field, "a path whose parent is a directory", f"{probe} is a file")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise fail(path, field, "a writable directory", f"{probe} is not writable")
  return path


def check_replaceable(path, field: str, is_ours, what: str) -> None:
  """Fails unless ``path`` may be written: a new file, or ``what`` csa_jax wrote (then replaced),
  in a writable directory; a file csa_jax did not write is never replaced.

  Args:
    path: the output file.
    field: the argument or flag that named it, for the message.
    is_ours: ``is_ours(path) -> bool``, whether an existing file is csa_jax's own.
    what: the kind of file, for the message ("an .npz export").
  """
  check_output_path(path, field)
  if os.path.lexists(path) and not is_ours(path):
    raise fail(path, field, f"a new file or {what} csa_jax wrote (replaced)",
               "an existing file csa_jax did not write (left alone)")


def _identity(path: str) -> tuple[int, int] | None:
  """(st_dev, st_ino) of an existing file (symlinks followed), else None."""
  try:
    st = os.stat(path)
  except (OSError, ValueError):
    return None
  return st.st_dev, st.st_ino


def _within(path: str, directory: str) -> bool:
  return os.path.commonpath([path, directory]) == directory


def check_distinct(outputs: Iterable[tuple[str, Any]], inputs: Iterable[tuple[str, Any]]) -> None:
  """Fails, before any work, if an output would land on an input or on another output.

  Two paths are the same file when their resolved real paths are equal (symlinks, ``..``) or,
  for existing files, when they share (st_dev, st_ino) (hard links, case-insensitive file
  systems). An input that is a directory (a training workdir, a TFDS copy) is read whole, so an
  output inside it is refused too.

  Args:
    outputs: (flag, path) of every file the command will write.
    inputs: (flag, path) of every file or directory it reads; a None or empty path is skipped.

  Raises:
    InputError: naming the output's path and flag and the input's flag and path.
  """
  ins = []
  for flag, p in inputs:
    if p is None or os.fspath(p) == "":
      continue
    p = os.fspath(p)
    real = os.path.realpath(p)
    ins.append((flag, p, real, _identity(real), os.path.isdir(real)))
  seen = []
  for flag, p in outputs:
    p = os.fspath(p)
    real = os.path.realpath(p)
    ident = _identity(real)
    for iflag, ip, ireal, iident, isdir in ins:
      if real == ireal or ident is not None and ident == iident:
        raise fail(p, flag, "an output path that is none of the inputs",
                   f"the same file as {iflag} {ip}")
      if isdir and _within(real, ireal):
        raise fail(p, flag, f"an output outside the input directory {iflag} {ip}",
                   "a path inside it")
    for oflag, op, oreal, oident in seen:
      if real == oreal or ident is not None and ident == oident:
        raise fail(p, flag, "a different file from every other output",
                   f"the same file as {oflag} {op}")
    seen.append((flag, p, real, ident))


def write_json(path, obj: Any) -> None:
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
    f.write("\n")


def save_npy(path, arr: np.ndarray) -> None:
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.save(f, arr)


def save_npz(path, **arrays: np.ndarray) -> None:
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.savez(f, **arrays)


def _json_default(o):
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, np.generic):
    return o.item()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")
