"""What the host drivers (``top_k_search``, ``rerank_shortlist``, ``search_and_rerank``,
``evaluate``) refuse.

A JAX gather clamps an index past the end to the last row and numpy wraps a negative one, NaN
never wins a comparison, and a descriptor of norm 10 scores 10 times higher: each would give a
ranking that looks fine and is wrong. So before any work the drivers check what they are given,
and every problem is an ``InputError`` naming the argument, the row and what was expected:

- queries: (Q >= 1, C) finite; rows whose L2 norm is off 1 by more than ``NORM_TOL`` are
  re-normalised with one warning, as ``csa-jax`` does with files (an all-zero row is refused:
  it has no direction);
- a database held in memory (numpy or jax array): finite rows, re-normalised the same way (a
  copy: the caller's array is never changed). A memory map or ``StackedRows`` is not read up
  front (R1M is 8 GB): its non-finite rows are caught by the search as it scores them, and the
  rows CSA re-ranks are checked as they are gathered; ``data.large_descriptors.load_large`` checks
  every row of a file once, before the search or, with ``defer`` (``csa-jax eval``'s R1M), in
  the search's own pass over the rows (``DeferredRows``);
- rankings: integers in [0, N), no id twice within the columns used;
- the model: a ``Model`` or ``(params, ModelConfig)`` pair with finite parameters.

Inside jit (``rerank_affinity`` / ``rerank_scores`` on traced ids) nothing can be checked: ids
must be in [0, N) there, or the gather clamps them.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from csa_jax.core.config import Model, ModelConfig
from csa_jax.core.normalize import NORM_TOL, l2_normalize, row_norms
from csa_jax.errors import fail

log = logging.getLogger(__name__)


def _first(mask) -> int:
  return int(np.flatnonzero(mask)[0])


def _unit_rows(x, who: str, field: str, source: str):
  """``x`` with every row of unit norm: refused if a row is zero, re-normalised if needed."""
  if isinstance(x, jax.Array):
    norms = np.asarray(jnp.linalg.norm(x.astype(jnp.float32), axis=1))
  else:
    norms = row_norms(x)
  zero = norms == 0
  if zero.any():
    raise fail(source, f"{field}[{_first(zero)}]", "a descriptor with a direction (L2 norm > 0)",
               "an all-zero row")
  off = np.abs(norms - 1) > NORM_TOL
  if not off.any():
    return x
  log.warning("%s: %s: %d of %d rows are not L2-normalised (row %d has norm %.4g); "
              "re-normalised", who, field, int(off.sum()), len(norms), _first(off),
              float(norms[_first(off)]))
  return l2_normalize(x)


def _finite_rows(x, source: str, field: str) -> None:
  if isinstance(x, jax.Array):
    ok = np.asarray(jnp.isfinite(x).all(axis=1))
  else:
    ok = np.isfinite(x).all(axis=1)
  if not ok.all():
    raise fail(source, f"{field}[{_first(~ok)}]", "finite values", "NaN/inf")


def check_queries(q_QxC, c: int, who: str, normalise: bool = True):
  """Queries a driver can use: (Q >= 1, C) float32, finite, unit rows (re-normalised if not).

  Args:
    q_QxC: a numpy or jax array.
    c: the database's descriptor size.
    who: the public function, for messages.
    normalise: False for a dot-product search (``top_k_search``): only shape and finiteness.

  Returns:
    q_QxC as float32, re-normalised where needed (a numpy array stays numpy, jax stays jax).
  """
  if not isinstance(q_QxC, jax.Array):
    q_QxC = np.asarray(q_QxC)
  shape = tuple(q_QxC.shape)
  if len(shape) != 2 or shape[1] != c or not shape[0]:
    raise fail(who, "q_QxC", f"(Q >= 1, C={c}) queries (the database's width C)",
               f"shape {shape}")
  if not jnp.issubdtype(q_QxC.dtype, jnp.floating):
    raise fail(who, "q_QxC", "floating-point descriptors", f"dtype {q_QxC.dtype}")
  q_QxC = q_QxC.astype(jnp.float32) if isinstance(q_QxC, jax.Array) else q_QxC.astype(
      np.float32, copy=False)
  _finite_rows(q_QxC, who, "q_QxC")
  return _unit_rows(q_QxC, who, "q_QxC", who) if normalise else q_QxC


def in_memory(db) -> bool:
  """A database held whole in memory (checked up front), not a memmap, ``DeferredRows`` or
  ``StackedRows``."""
  return isinstance(db, jax.Array) or (isinstance(db, np.ndarray)
                                       and not isinstance(db, np.memmap))


def rows_need_check(db) -> bool:
  """Whether rows gathered from ``db`` still need ``check_gathered_rows``: not for an in-memory
  array (checked whole by ``check_database``) nor for a reader that checks each row it reads
  (``checks_reads``: ``first_round.MappedRows``)."""
  return not in_memory(db) and not getattr(db, "checks_reads", False)


def check_database(db, who: str, source: str = "db"):
  """The database as a driver uses it; in-memory arrays are checked and re-normalised here.

  Args:
    db: (N, C) numpy/jax array, memmap or ``StackedRows``.
    who: the public function, for messages.
    source: the database's file, if it came from one.

  Returns:
    db, or a re-normalised float32 copy of an in-memory db whose rows were not unit-norm.
  """
  shape = tuple(db.shape)
  if len(shape) != 2 or not shape[0] or not shape[1]:
    raise fail(source, "db", "(N >= 1, C >= 1) descriptors", f"shape {shape}")
  if not in_memory(db):
    return db
  if not jnp.issubdtype(db.dtype, jnp.floating):
    raise fail(source, "db", "floating-point descriptors", f"dtype {db.dtype}")
  _finite_rows(db, source, "db")
  return _unit_rows(db, who, "db", source)


def first_nonfinite_row(rows_BxC, start: int) -> int | None:
  """The index of the first row of a db block holding NaN/inf, or None."""
  ok = np.isfinite(np.asarray(rows_BxC)).all(axis=1)
  return None if ok.all() else start + _first(~ok)


def nonfinite_db_error(source: str, row: int | None, a: int, b: int):
  """The error for a db block whose scores were not finite (queries being finite)."""
  if row is not None:
    return fail(source, f"db[{row}]", "finite values", "NaN/inf")
  return fail(source, f"db[{a}:{b}]", "descriptors whose dot products are finite",
              "overflowing scores (values far from unit norm)")


def finite_row_norms(rows_RxC: np.ndarray, ids_R: np.ndarray, source: str) -> np.ndarray:
  """The float64 norms of db rows read from a file, after refusing a row with NaN/inf.

  Args:
    rows_RxC: the rows as read.
    ids_R: their db ids (named in the error).
    source: the database's file.

  Returns:
    norms_R, float64 (no overflow or underflow of float32 squares).
  """
  ok = np.isfinite(rows_RxC).all(axis=1)
  if not ok.all():
    raise fail(source, f"db[{int(ids_R[_first(~ok)])}]", "finite values", "NaN/inf")
  return row_norms(rows_RxC)


def check_gathered_rows(rows_RxC: np.ndarray, ids_R: np.ndarray, source: str) -> None:
  """Rows of a memmap about to enter CSA: finite and unit-norm (a memmap is not re-normalised).

  Args:
    rows_RxC: the rows as read.
    ids_R: their db ids.
    source: the database's file.
  """
  norms = finite_row_norms(rows_RxC, ids_R, source)
  off = np.abs(norms - 1) > NORM_TOL
  if off.any():
    i = _first(off)
    raise fail(source, f"db[{int(ids_R[i])}]", "an L2-normalised row (normalise the file, or "
               "load it with data.large_descriptors.load_large, which re-normalises)",
               f"norm {float(norms[i]):.4g}")


def check_model(model, who: str) -> Model:
  """The model a driver was given, as a ``Model``: a (params, ModelConfig) pair, finite params.

  Args:
    model: a ``Model`` or any ``(params, cfg)`` pair (``csa_jax.load_model`` returns one).
    who: the public function, for messages.

  Returns:
    ``Model(params, cfg)``.
  """
  if not isinstance(model, (tuple, list)):
    found = type(model).__name__
  elif len(model) != 2:
    found = f"{len(model)} items"
  elif not isinstance(model[1], ModelConfig):
    found = f"({type(model[0]).__name__}, {type(model[1]).__name__})"
  else:
    found = None
  if found is not None:
    raise fail(who, "model", "Model(params, cfg) or a (params, ModelConfig) pair, as "
               "csa_jax.load_model returns", found)
  check_params(model[0], who)
  return Model(*model)


def check_params(params, who: str) -> None:
  """Refuses a model with a NaN/inf parameter: it would score every candidate NaN."""
  finite = jax.device_get(jax.tree.map(lambda x: jnp.isfinite(x).all(), params))  # one fetch
  for path, ok in jax.tree_util.tree_flatten_with_path(finite)[0]:
    if not ok:
      raise fail(who, "params" + jax.tree_util.keystr(path), "finite values", "NaN/inf")


def check_scores(scores_QxK: np.ndarray, who: str) -> None:
  """Refuses CSA scores that are not finite (their sort order would mean nothing)."""
  ok = np.isfinite(scores_QxK).all(axis=1)
  if not ok.all():
    raise fail(who, f"scores[{_first(~ok)}]", "finite CSA scores (finite inputs and model)",
               "NaN/inf")
