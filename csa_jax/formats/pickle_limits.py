"""The caps on one pickle: work and expanded size per byte of input, nesting depth, no cycles.

Each cap is a pure function of the file, so a legitimate file of any size loads:

- work (bytes the stand-ins convert or copy) and the expanded size of the result, counting every
  reference each time it occurs (a container item 1, a string or bytes ``1 + len // 16``, an
  array ``1 + size``), are each at most ``BUDGET_PER_BYTE`` units per byte of input plus
  ``BUDGET_BASE``. A "billion laughs" pickle (lists of memo references to one list) is refused
  here, where counting is cheap, instead of being expanded by ``np.asarray`` downstream;
- nesting at most ``MAX_DEPTH`` levels and no reference cycles;
- arrays of at most ``MAX_NDIM`` dimensions.
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np

from csa_jax.errors import fail
from csa_jax.formats.pickle_markers import DICT_TYPES, NONE_TYPE, NUMPY_TYPES, brief

MAX_DEPTH = 100
MAX_NDIM = 32
BUDGET_PER_BYTE = 8
BUDGET_BASE = 1 << 20
_CHARS_PER_UNIT = 16


class Budget:
  """Units of work and of expanded result one file may use (see the module docstring).

  Args:
    source: the file, for messages.
    nbytes: bytes of input known up front; ``allow`` adds more (a checkpoint's storages).
  """

  def __init__(self, source: str, nbytes: int = 0):
    self.source = source
    self.limit = BUDGET_BASE + BUDGET_PER_BYTE * nbytes
    self.work = 0

  def allow(self, nbytes: int) -> None:
    """Raises the limit for ``nbytes`` more bytes of input read outside the pickle."""
    self.limit += BUDGET_PER_BYTE * nbytes

  def charge(self, units: int, what: str) -> None:
    """Counts ``units`` of work; ``InputError`` (naming ``what`` was done) past the limit."""
    self.work += units
    if self.work > self.limit:
      raise fail(self.source, "pickle", f"at most {self.limit} units of work ({BUDGET_PER_BYTE} "
                 "per byte of input)", f"more while {what} (the same data converted over and "
                 "over through memo references)")


def _leaf_cost(x, source: str) -> int | None:
  """Units for a leaf, None for a container to descend into; anything else is refused."""
  t = type(x)
  if t is str or t is bytes or t is bytearray:
    return 1 + len(x) // _CHARS_PER_UNIT
  if t is int:
    return 1 + x.bit_length() // 64
  if t in (float, bool, complex, NONE_TYPE):
    return 1
  if t is np.ndarray:
    return None if x.dtype.hasobject else 1 + x.size
  if t in (list, tuple, set, frozenset) or t in DICT_TYPES:
    return None
  if isinstance(x, (str, bytes)):  # numpy's str_ / bytes_ scalars
    return 1 + len(x) // _CHARS_PER_UNIT
  if isinstance(x, (np.generic, np.dtype)) or (t is type and x in NUMPY_TYPES):
    return 1
  if t in (memoryview, pickle.PickleBuffer):
    with memoryview(x) as m:
      return 1 + m.nbytes // _CHARS_PER_UNIT
  raise fail(source, "pickle", "only data (arrays, lists, dicts, strings, numbers)",
             f"{brief(x)} in the result")


def _children(x):
  if type(x) in DICT_TYPES:
    return itertools.chain.from_iterable(x.items())
  if type(x) is np.ndarray:
    return x.flat
  return iter(x)


def check_graph(root, budget: Budget) -> int:
  """Refuses a result that holds anything but data, nests deeper than ``MAX_DEPTH``, has a
  reference cycle, or expands to more than ``budget.limit`` units.

  Shared containers are costed once and their cost reused per reference, so the walk is linear
  in the distinct objects however large the expansion.

  Args:
    root: the unpickled object tree.
    budget: the file's budget (its ``limit`` and ``source``).

  Returns:
    The expanded size in units.
  """
  source, limit = budget.source, budget.limit

  def too_big():
    return fail(source, "pickle", f"data that expands to at most {limit} items "
                f"({BUDGET_PER_BYTE} per byte of input)", "more (shared references that multiply "
                "when expanded: a 'billion laughs' pickle)")

  cost = _leaf_cost(root, source)
  if cost is not None:
    if cost > limit:
      raise too_big()
    return cost
  done: dict[int, int] = {}
  active = {id(root)}
  frames = [[root, _children(root), 1]]  # [container, its remaining children, units so far]
  while True:
    frame = frames[-1]
    for child in frame[1]:
      c = _leaf_cost(child, source)
      if c is None:
        c = done.get(id(child))
        if c is None:
          if id(child) in active:
            raise fail(source, "pickle", "data without reference cycles",
                       f"{brief(child)} that contains itself")
          if len(frames) >= MAX_DEPTH:
            raise fail(source, "pickle", f"nesting at most {MAX_DEPTH} levels deep",
                       "deeper nesting")
          active.add(id(child))
          frames.append([child, _children(child), 1])
          break
      frame[2] += c
      if frame[2] > limit:
        raise too_big()
    else:
      frames.pop()
      active.discard(id(frame[0]))
      done[id(frame[0])] = frame[2]
      if not frames:
        return frame[2]
      frames[-1][2] += frame[2]
      if frames[-1][2] > limit:
        raise too_big()
