"""A user's own queries and database, as ``csa-jax rerank`` reads them.

``load_database`` / ``load_queries`` / ``load_names`` (from ``data.index_lists``) read the user's
files with the checks of ``data.descriptors``; ``retrieval.rerank.search_and_rerank`` then
searches and re-ranks them. ``rerank`` is that driver's deprecated name.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np

from csa_jax.data import descriptors
from csa_jax.data.index_lists import load_names  # noqa: F401  (public here too)
from csa_jax.errors import fail
from csa_jax.formats import containers
from csa_jax.retrieval import rerank as rerank_lib
from csa_jax.retrieval import validate

log = logging.getLogger(__name__)

def _entry(obj, path: str, key: str):
  """``obj[key]`` when a dict holds it (a test-set file with 'db' and 'query'), else its one
  entry or the bare array."""
  if isinstance(obj, dict) and key in obj:
    return obj[key]
  return containers.pick(obj, path, None, f"{key} descriptors")


def load_database(path) -> np.ndarray:
  """A user's database descriptors, (N, C) float32 with unit rows.

  A float32 C-order (N, C) ``.npy`` with N > C is memory-mapped (every row checked a block at a
  time; never read whole); anything else any reader accepts (.npy, .npz, pickle, JSON; a dict
  is read at its 'db' entry or its only one) is read and validated in RAM.

  Args:
    path: the file.

  Returns:
    db_NxC: a read-only memmap or an array (``descriptors.as_descriptors``).
  """
  return descriptors.load_large(path, field="db", key="db")


def load_queries(path, dim: int | None = None) -> np.ndarray:
  """A user's query descriptors, (Q, C) float32 with unit rows (a dict: its 'query' entry).

  Args:
    path: the file.
    dim: the database's C, which the queries must share (also decides their orientation).

  Returns:
    q_QxC (``descriptors.as_descriptors``).
  """
  path = os.fspath(path)
  obj = containers.load_container(path)
  return descriptors.as_descriptors(_entry(obj, path, "query"), path, "query", dim=dim)


def rerank(q_QxC, db, model, K: int, T: int | None = None, *, L: int | None = None,
           batch_size: int | None = None, search_dtype: str = "float32",
           block: int | None = None, devices=None, progress: bool = False, source: str = "db"):
  """Deprecated: use ``search_and_rerank(q_QxC, db, model, K, T)`` (``retrieval.rerank``).

  The same arguments and result as ``search_and_rerank``, plus ``L``: None takes the model's
  anchors, any other value is refused.

  Returns:
    (ids_QxT int64, scores_QxT float32), as ``search_and_rerank``.
  """
  warnings.warn("csa_jax: rerank is deprecated; use search_and_rerank (see CHANGELOG.md)",
                DeprecationWarning, stacklevel=2)
  if L is not None:
    cfg = validate.check_model(model, "rerank").cfg
    if L != cfg.anchors:
      raise fail("rerank", "L", f"{cfg.anchors} (the model's anchors)", str(L))
  return rerank_lib._search_and_rerank(  # pylint: disable=protected-access  (its messages)
      "rerank", q_QxC, db, model, K, T, batch_size, search_dtype, block, devices, progress,
      source)
