"""Index and name lists from users' files: gnd entries, image lists, cluster labels and pairs.

JSON and MATLAB-converted files store indices in every shape a list of numbers can take; these
validators accept what means the same (``3.0`` for 3, a numpy text array of names) and refuse the
rest with one line naming the file and the field.
"""

from __future__ import annotations

import os
import unicodedata

import numpy as np

from csa_jax.errors import fail
from csa_jax.formats.containers import describe, load_container
from csa_jax.formats.regular_file import MAX_TEXT_FILE_BYTES, read_regular

_CONTAINER_HEADS = (b"\x93NUMPY", b"PK", b"\x80")  # .npy, .npz, pickle: read as containers


def as_indices(v, source: str, field: str, n: int | None = None) -> np.ndarray:
  """A flat list of 0-based indices, inside [0, n) when n is known.

  Args:
    v: the list as read (list, tuple or array; integral floats are accepted).
    source: the file, for messages.
    field: the entry ('gnd[3].easy', 'train.qidxs'), for messages.
    n: the size of what is indexed, when known.

  Returns:
    idx_K: int64 (empty when ``v`` is).
  """
  if isinstance(v, (str, bytes, dict)):
    raise fail(source, field, "a flat list of integer indices", describe(v))
  try:
    a = np.asarray(v)
  except (ValueError, TypeError, RecursionError):
    raise fail(source, field, "a flat list of integer indices", describe(v)) from None
  if a.size == 0:
    return np.zeros((0,), np.int64)
  if a.ndim != 1:
    raise fail(source, field, "a flat list of integer indices", f"shape {a.shape}")
  if (a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a))
      and np.all(np.abs(a) < 2.0**62)):
    a = a.astype(np.int64)  # JSON / MATLAB-converted lists sometimes store 3.0
  if a.dtype.kind not in "iu":
    first = a.ravel()[:1].tolist()[0]
    raise fail(source, field, "integer indices", f"dtype {a.dtype} (e.g. {first!r:.40})")
  if a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max:
    raise fail(source, field, "indices that fit int64", f"{int(a.max())}")
  a = a.astype(np.int64)
  if n is not None and (a.min() < 0 or a.max() >= n):
    bad = a[(a < 0) | (a >= n)]
    raise fail(source, field, f"indices in [0, {n})",
               f"{bad.size} out of range (e.g. {int(bad[0])})")
  if n is None and a.min() < 0:
    raise fail(source, field, "non-negative indices", f"{int(a.min())}")
  return a


def as_names(v, source: str, field: str) -> list[str]:
  """A flat list of image names or ids ('imlist', 'qimlist', 'cids') as strings.

  A name must be text that can be written out (UTF-8 encodable: no lone surrogate such as
  JSON's "\\ud800") and hold no control character (Unicode category Cc: C0, DEL and C1, tab
  included): names end up in CSV and JSON files and in terminal messages, where such a character
  would break a row, a line or the terminal, and no image name needs one. Other characters,
  U+2028 / U+2029 included, are kept as they are.

  Args:
    v: the list as read: text, bytes (decoded as UTF-8) or integer ids.
    source: the file, for messages.
    field: the entry, for messages.

  Returns:
    The names, one string each.
  """
  if isinstance(v, np.ndarray):
    if v.ndim != 1 or v.dtype.kind not in "USiuO":  # object arrays: each name checked below
      raise fail(source, field, "a flat list of names", describe(v))
    v = v.tolist()
  if not isinstance(v, (list, tuple)):
    raise fail(source, field, "a list of names", describe(v))
  out = []
  for i, s in enumerate(v):
    if isinstance(s, bytes):
      s = s.decode("utf-8", "replace")
    elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
      s = str(int(s))  # numeric ids (cids) are names too
    elif not isinstance(s, str):
      raise fail(source, f"{field}[{i}]", "a name (text)", describe(s))
    s = str(s)
    _check_name(s, source, f"{field}[{i}]")
    out.append(s)
  return out


def _check_name(s: str, source: str, field: str) -> None:
  """Refuses a name that cannot be encoded as UTF-8 or that holds a control character."""
  try:
    s.encode("utf-8")
  except UnicodeEncodeError as e:
    raise fail(source, field, "a name in valid Unicode (UTF-8 encodable)",
               f"a lone surrogate U+{ord(s[e.start]):04X} at character {e.start}") from None
  for k, ch in enumerate(s):
    if unicodedata.category(ch) == "Cc":
      raise fail(source, field, "a name without control characters",
                 f"U+{ord(ch):04X} at character {k}")


def load_names(path, n: int, field: str) -> list[str]:
  """Image names, one per descriptor: a text file (one per line) or a list in a JSON file.

  A dict (e.g. a gnd file) gives its ``field`` entry ('imlist' for the database, 'qimlist' for
  the queries); .npy / .npz / pickle files are read safely like any other input.

  Args:
    path: the file.
    n: how many names there must be.
    field: 'imlist' or 'qimlist', for dicts and messages.

  Returns:
    The n names.
  """
  path = os.fspath(path)
  raw = read_regular(path, "a readable names file", MAX_TEXT_FILE_BYTES)
  if raw.startswith(_CONTAINER_HEADS) or raw.lstrip()[:1] in (b"[", b"{"):
    obj = load_container(path)
    if isinstance(obj, dict):
      if field not in obj:
        raise fail(path, field, f"a list of names (or a dict with '{field}')",
                   describe(obj))
      obj = obj[field]
    names = as_names(obj, path, field)
  else:
    try:
      text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is no name
    except UnicodeDecodeError as e:
      raise fail(path, field, "UTF-8 text, one name per line",
                 f"undecodable byte at offset {e.start}") from None
    # "\n" only: str.splitlines() also splits at U+2028, U+0085, "\f", ..., which would shift
    # every later name by one. Only ASCII blanks are trimmed ("\r\n" line ends, padding); any
    # other character is the name's.
    names = [s.strip(" \t\r") for s in text.split("\n")]
    while names and not names[-1]:
      names.pop()
    if "" in names:
      raise fail(path, f"{field}[{names.index('')}]", "a name on every line", "an empty line")
    names = as_names(names, path, field)
  if len(names) != n:
    raise fail(path, field, f"{n} names (one per descriptor)", f"{len(names)} names")
  return names
