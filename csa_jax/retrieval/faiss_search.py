"""An approximate first round by FAISS, for databases too large to search exactly (the faiss extra).

``pip install 'csa_jax[faiss]'`` installs faiss-cpu; faiss is imported only when these functions
run. ``build_faiss_index`` builds an inner-product index from any FAISS factory string ("Flat",
"IVF16384,PQ64", "HNSW32,Flat"), reading the database a block of rows at a time (a memmap is
never read whole at once); ``faiss_first_round`` searches it and returns (Q, T) ids for
``rerank_shortlist`` or ``csa-jax rerank --first-round``. docs/first_round.md has the recipe for
a 10M-image database.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from csa_jax.errors import fail
from csa_jax.retrieval import first_round, validate

log = logging.getLogger(__name__)

_BLOCK_BYTES = 64 << 20  # db rows added to the index per step
_MIN_TRAIN = 100_000  # training rows at the least (all of a smaller db)
_TRAIN_PER_LIST = 64  # and this many per inverted list (FAISS warns below 39)


def require_faiss(who: str):
  """The faiss module, or one ``InputError`` line saying how to install it."""
  try:
    import faiss  # noqa: PLC0415  (optional: the faiss extra)
  except ImportError as e:
    raise fail(who, "faiss", "the faiss package (pip install 'csa_jax[faiss]', or faiss-cpu / "
               "faiss-gpu)", f"none importable ({type(e).__name__}: {e})") from None
  return faiss


def _why(e: RuntimeError) -> str:
  """FAISS's own reason, without the C++ location it prefixes."""
  return str(e).strip().splitlines()[-1].split(": ")[-1][:200]


def _rows(db, a: int, b: int, source: str) -> np.ndarray:
  """db rows [a, b) as a float32 C-order array; rows of a map are checked as they are read."""
  if isinstance(db, np.ndarray):  # a memmap slice reads only these rows
    out = np.ascontiguousarray(db[a:b], np.float32)
  else:  # jax array, StackedRows, MappedRows
    out = np.ascontiguousarray(np.asarray(db[np.arange(a, b)]), np.float32)
  if validate.rows_need_check(db):
    validate.check_gathered_rows(out, np.arange(a, b), source)
  return out


def _sample(db, m: int, seed: int, source: str) -> np.ndarray:
  n = db.shape[0]
  if m >= n:
    return _rows(db, 0, n, source)
  rows = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
  out = np.ascontiguousarray(np.asarray(db[rows]), np.float32)
  if validate.rows_need_check(db):
    validate.check_gathered_rows(out, rows, source)
  return out


def build_faiss_index(db, index_factory: str = "Flat", *, train_size: int | None = None,
                      seed: int = 0, source: str = "db"):
  """A FAISS inner-product index over ``db`` (cosine, its rows being unit).

  Args:
    db: (N, C) database: numpy/jax array (checked and re-normalised like ``rerank_shortlist``'s),
      memmap (rows checked, unit-norm required, as they are read), ``StackedRows`` or
      ``first_round.MappedRows``.
    index_factory: a FAISS ``index_factory`` string: "Flat" (exact), "IVF4096,Flat",
      "IVF16384,PQ64", "HNSW32,Flat", "OPQ64,IVF65536_HNSW32,PQ64", ...
    train_size: rows an index that needs training (IVF, PQ) is trained on, sampled uniformly
      (seeded); default max(100000, 64 per inverted list), at most N.
    seed: the training sample's seed.
    source: the database's file, named in error messages.

  Returns:
    A trained ``faiss.Index`` holding every row, id = row index.

  Raises:
    InputError: faiss missing, a factory string FAISS refuses, a bad row.
  """
  who = "build_faiss_index"
  faiss = require_faiss(who)
  db = validate.check_database(db, who, source)
  n, c = db.shape
  try:
    index = faiss.index_factory(c, index_factory, faiss.METRIC_INNER_PRODUCT)
  except RuntimeError as e:
    raise fail(who, "index_factory", "a FAISS index factory string ('Flat', 'IVF4096,Flat', "
               "'IVF16384,PQ64', 'HNSW32,Flat', ...)",
               f"{index_factory!r} ({_why(e)})") from None
  t0 = time.perf_counter()
  if not index.is_trained:
    try:
      nlist = faiss.extract_index_ivf(index).nlist
    except RuntimeError:  # not an IVF index (PQ, ...)
      nlist = 0
    m = min(n, train_size or max(_MIN_TRAIN, _TRAIN_PER_LIST * nlist))
    log.info("faiss: training %s on %d of %d rows", index_factory, m, n)
    try:
      index.train(_sample(db, m, seed, source))
    except RuntimeError as e:
      raise fail(who, "train_size", f"enough rows to train {index_factory!r}",
                 f"{m} ({_why(e)})") from None
  step = max(1, _BLOCK_BYTES // (4 * c))
  for a in range(0, n, step):
    index.add(_rows(db, a, min(n, a + step), source))
  log.info("faiss: %s over %d rows built in %.1f s", index_factory, n, time.perf_counter() - t0)
  return index


def faiss_first_round(q_QxC, db, T: int, index_factory: str = "Flat", *, index=None,
                      nprobe: int | None = None, params: str | None = None,
                      train_size: int | None = None, seed: int = 0,
                      source: str = "db") -> np.ndarray:
  """The top-T db ids of each query by FAISS inner product: a first round for CSA.

  Args:
    q_QxC: (Q, C) queries (checked and re-normalised like ``rerank_shortlist``'s).
    db: (N, C) database, as ``build_faiss_index`` takes it; unused when ``index`` is given
      (pass the same database it was built on, for its shape).
    T: results per query, 1 <= T <= N.
    index_factory: the FAISS factory string the index is built from (``build_faiss_index``).
    index: a ``faiss.Index`` already built over ``db`` (``build_faiss_index``, or
      ``faiss.read_index``), searched instead of building one.
    nprobe: inverted lists visited per query by an IVF index (FAISS's default is 1).
    params: further FAISS search parameters, as ``faiss.ParameterSpace`` reads them
      ("efSearch=128", "nprobe=64,quantizer_efSearch=64").
    train_size: see ``build_faiss_index``.
    seed: see ``build_faiss_index``.
    source: the database's file, named in error messages.

  Returns:
    ids_QxT int64, best first; -1 where the index found fewer than T (raise nprobe or efSearch),
    the padding ``first_round.check_first_round`` accepts after a row's last id.
  """
  who = "faiss_first_round"
  faiss = require_faiss(who)
  n, c = db.shape
  if not 1 <= T <= n:
    raise fail(who, "T", f"1 <= T <= N = {n}", str(T))
  q = np.ascontiguousarray(validate.check_queries(q_QxC, c, who), np.float32)
  if index is None:
    index = build_faiss_index(db, index_factory, train_size=train_size, seed=seed,
                              source=source)
  elif index.d != c or index.ntotal != n:
    raise fail(who, "index", f"an index over the database (d={c}, {n} rows)",
               f"d={index.d}, {index.ntotal} rows")
  setting = ",".join(p for p in (f"nprobe={nprobe}" if nprobe is not None else "", params) if p)
  if setting:
    try:
      faiss.ParameterSpace().set_index_parameters(index, setting)
    except RuntimeError as e:
      raise fail(who, "params", "search parameters this index has (nprobe: IVF, efSearch: HNSW)",
                 f"{setting!r} ({_why(e)})") from None
  t0 = time.perf_counter()
  _, ids = index.search(q, T)
  ids = np.asarray(ids, np.int64)
  short = int((ids == first_round.PAD).any(axis=1).sum())
  log.info("faiss: %d queries searched in %.2f s%s", len(q), time.perf_counter() - t0,
           f"; {short} found fewer than T={T} (-1 padding)" if short else "")
  return ids
