"""One reader for every file format users hold, told by content, not by name.

A file is a .npy, .npz, pickle or JSON document (docs/method.md section 6); ``load_container``
returns its content unvalidated but safely read: pickles through ``safe_pickle`` (data only,
never code), numpy files through ``npyio`` (checked before they allocate), JSON documents of at
most ``MAX_TEXT_FILE_BYTES`` (refused from their size, before a byte is read). Every file is
opened through ``regular_file.open_regular``: a FIFO, a device or a directory is refused at once.
``pick`` takes one entry out of it, with the error line a user can act on.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from csa_jax.errors import fail
from csa_jax.formats import npyio
from csa_jax.formats.regular_file import MAX_TEXT_FILE_BYTES, open_regular, read_regular
from csa_jax.formats.safe_pickle import load_data


def file_format(path) -> str:
  """The format of ``path`` from its first bytes (a ``.pkl`` / ``.pickle`` name also counts).

  Args:
    path: the file.

  Returns:
    'npy', 'npz', 'pickle' or 'json'.
  """
  path = os.fspath(path)
  f, _ = open_regular(path)
  try:
    with f:
      head = f.read(8)
  except OSError as e:
    raise fail(path, "file", "a readable file", e.strerror or type(e).__name__) from None
  if not head:
    raise fail(path, "file", "a .npy, .npz, pickle or JSON file", "an empty file (0 bytes)")
  if head.startswith(b"\x93NUMPY"):
    return "npy"
  if head.startswith(b"PK"):
    return "npz"
  if head[:1] == b"\x80" or path.endswith((".pkl", ".pickle")):
    return "pickle"
  if head.lstrip()[:1] in (b"{", b"["):
    return "json"
  raise fail(path, "file", "a .npy, .npz, pickle or JSON file", f"unknown content {head[:8]!r}")


def load_container(path, mmap: bool = False) -> Any:
  """The file's content, whatever its format.

  Args:
    path: the file.
    mmap: memory-map a .npy instead of reading it.

  Returns:
    An ndarray (.npy, or a memmap with ``mmap``), a dict of arrays (.npz), or the builtin
    containers of a pickle / JSON document.
  """
  path = os.fspath(path)
  fmt = file_format(path)
  if fmt == "pickle":
    return load_data(path)
  if fmt == "json":
    return load_json(path)
  if fmt == "npy":
    return npyio.load_npy(path, mmap=mmap)
  return npyio.load_npz(path)


def load_json(path) -> Any:
  """A JSON document (UTF-8) of at most ``MAX_TEXT_FILE_BYTES``, refused before it is read.

  Args:
    path: the file.

  Returns:
    The document's builtin containers.
  """
  path = os.fspath(path)
  raw = read_regular(path, "a readable JSON file", MAX_TEXT_FILE_BYTES)
  try:
    return json.loads(raw.decode("utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise fail(path, "file", "a complete JSON document", f"invalid JSON ({e})") from None
  except RecursionError:
    raise fail(path, "file", "a JSON document of reasonable nesting depth",
               "nesting too deep to parse") from None


def describe(obj) -> str:
  """What ``obj`` is, in the words of an error message ("an array of shape (3, 4) (float32)").

  Args:
    obj: content read from a user's file.

  Returns:
    A short description that never lists the content itself.
  """
  if isinstance(obj, np.ndarray):
    return f"an array of shape {obj.shape} ({obj.dtype})"
  if isinstance(obj, dict):
    return f"a dict with keys {sorted(map(str, obj))[:8]}"
  if isinstance(obj, (list, tuple)):
    return f"a {type(obj).__name__} of {len(obj)} items"
  name = type(obj).__name__
  return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def pick(obj, source: str, key: str | None, what: str):
  """``obj[key]`` for dict content, ``obj`` itself for a bare array; a clear error otherwise.

  Args:
    obj: the file's content (``load_container``).
    source: the file, for messages.
    key: the entry wanted; None takes the only entry of a one-entry dict.
    what: what the entry holds ("descriptors"), for messages.

  Returns:
    The entry, unvalidated.
  """
  if isinstance(obj, dict):
    if key is None:
      if len(obj) == 1:
        return next(iter(obj.values()))
      raise fail(source, "key", f"a key naming the {what} (one of {sorted(map(str, obj))})",
                 "no key given")
    if key not in obj:
      raise fail(source, key, f"the {what} under key '{key}'",
                 f"no such key (keys: {sorted(map(str, obj))})")
    return obj[key]
  if not isinstance(obj, np.ndarray) and key is not None:
    raise fail(source, key, f"a dict holding '{key}'", describe(obj))
  return obj  # a bare array is the one split the file holds, whatever the key
