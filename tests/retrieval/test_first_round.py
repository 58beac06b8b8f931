"""A first round from any engine: the id rule (``check_first_round``), re-ranking it with
``rerank_shortlist`` and the deprecated wrappers, the user's ids files, and a database read only
where the ranking names it (``MappedRows``, ``first_round_scores``)."""

import json
import logging
import re
import warnings

import numpy as np
import pytest

from toy_retrieval import spread_params

from csa_jax.core.config import ModelConfig
from csa_jax.core.normalize import l2_normalize
from csa_jax.errors import InputError
from csa_jax.retrieval import first_round, user_rerank
from csa_jax.retrieval.first_round import MappedRows, check_first_round, first_round_scores
from csa_jax.retrieval.rerank import csa_rerank, csa_scores, rerank_shortlist

CFG = ModelConfig(anchors=8, dim=16, depth=1, heads=2)
C, NQ, NDB, K, T = 12, 5, 80, 6, 14
NEED = max(K, CFG.anchors - 1)  # 7


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  db = l2_normalize(rng.standard_normal((NDB, C)).astype(np.float32))
  q = l2_normalize(rng.standard_normal((NQ, C)).astype(np.float32))
  top = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :T].astype(np.int64)
  return spread_params(CFG, rng), q, db, top


def check(ids, **kw):
  return check_first_round(ids, NDB, K, CFG.anchors, "ids.npy", "ids", **kw)


def one_line_error(match, ids, **kw):
  with pytest.raises(InputError, match=match) as e:
    check(ids, **kw)
  assert "\n" not in str(e.value)
  return str(e.value)


# The rule.


def test_trailing_padding_is_accepted_and_kept(problem):
  top = problem[3].copy()
  top[1, NEED:] = -1  # exactly max(K, L-1) ids, then padding
  top[3, 10:] = -1
  got = check(top)
  assert got is top  # checked, not copied
  for dtype in (np.int32, np.uint32, np.uint64, np.int16):
    ok = problem[3].astype(dtype)
    np.testing.assert_array_equal(check(ok), ok)


def test_padding_before_an_id_names_row_and_column(problem):
  top = problem[3].copy()
  top[2, 9] = -1  # an id follows at column 10
  msg = one_line_error(r"^ids\.npy: ids\[2, 9\]: expected db ids in \[0, N=80\) \(0-based\), -1 "
                       r"only as padding after a row's last id, found -1 before db id", top)
  assert f"db id {top[2, 10]} (column 10)" in msg


def test_a_row_with_fewer_ids_than_csa_reads_is_refused(problem):
  top = problem[3].copy()
  top[4, NEED - 1:] = -1
  one_line_error(r"^ids\.npy: ids\[4\]: expected at least max\(K, L-1\) = 7 db ids before any -1 "
                 r"padding \(K=6 candidates, L-1=7 anchors; retrieve more per query\), found 6 "
                 "ids", top)
  one_line_error(r"ids: expected at least max\(K, L-1\) = 7 ranked images per query.*found 5",
                 top[:, :5])


@pytest.mark.parametrize("bad", [NDB, 1000, -2, -7])
def test_out_of_range_names_row_column_value_and_n(problem, bad):
  top = problem[3].copy()
  top[3, 11] = bad
  one_line_error(rf"^ids\.npy: ids\[3, 11\]: expected db ids in \[0, N=80\).*, found {bad}$", top)


def test_duplicates_are_refused_in_the_whole_row_or_the_columns_given(problem):
  top = problem[3].copy()
  top[1, 12] = top[1, 2]
  msg = one_line_error(r"^ids\.npy: ids\[1\]: expected distinct db ids in a row \(a duplicate "
                       r"means a broken first round\), found id \d+ twice \(columns 2 and 12\)$",
                       top)
  assert f"id {top[1, 2]} twice" in msg
  np.testing.assert_array_equal(check(top, distinct_cols=NEED), top)  # past the columns used
  top[1, 5] = top[1, 2]
  one_line_error(r"ids\[1\]: expected distinct db ids in the first 7 columns", top,
                 distinct_cols=NEED)
  pad = problem[3].copy()
  pad[0, 10:] = -1  # padding repeats -1: not a duplicate
  check(pad)


@pytest.mark.parametrize("ids,found", [(np.zeros((5, 14), np.float32), "dtype float32"),
                                       (np.zeros((5, 14), bool), "dtype bool"),
                                       (np.zeros(14, np.int64), r"shape \(14,\)")])
def test_not_integer_ids_of_two_dimensions(ids, found):
  one_line_error(rf"^ids\.npy: ids: expected .*, found {found}$", ids)


# The drivers.


def test_rerank_shortlist_keeps_padding_past_what_csa_reads(problem):
  params, q, db, top = problem
  pad = top.copy()
  pad[0, NEED:] = -1
  pad[2, 11:] = -1
  want, want_scores = rerank_shortlist(q, db, top, (params, CFG), K, batch_size=3)
  got, scores = rerank_shortlist(q, db, pad, (params, CFG), K, batch_size=3)
  np.testing.assert_array_equal(got[:, :K], want[:, :K])  # CSA reads the first NEED only
  np.testing.assert_array_equal(scores, want_scores)
  np.testing.assert_array_equal(got[:, K:], pad[:, K:])  # the tail, padding included, as given
  assert got.dtype == pad.dtype


@pytest.mark.parametrize("bad", [-1, NDB])
def test_deprecated_wrappers_refuse_ids_they_would_wrap(problem, bad):
  params, q, db, top = problem
  top = top.copy()
  top[0, 3] = bad  # csa_scores used to gather -1 as the last row, silently
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with pytest.raises(InputError, match=rf"csa_scores: top_QxT\[0, 3\]: .*found {bad}"):
      csa_scores(params, CFG, q, db, top, K, CFG.anchors)
    with pytest.raises(InputError, match=rf"csa_rerank: top_QxT\[0, 3\]: .*found {bad}"):
      csa_rerank(params, CFG, q, db, top, K, CFG.anchors)


def test_deprecated_wrappers_equal_rerank_shortlist_on_padded_ids(problem):
  params, q, db, top = problem
  pad = top.copy()
  pad[1, NEED:] = -1
  got, scores = rerank_shortlist(q, db, pad, (params, CFG), K, batch_size=2)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    np.testing.assert_array_equal(csa_rerank(params, CFG, q, db, pad, K, CFG.anchors,
                                             batch_size=2), got)
    new = csa_scores(params, CFG, q, db, pad, K, CFG.anchors, batch_size=2)
  np.testing.assert_array_equal(np.sort(new, axis=1), np.sort(scores, axis=1))


# A database read only where the ranking names it.


class Recorder(MappedRows):
  """MappedRows that records the rows it reads."""

  def __init__(self, mm, source="db"):
    super().__init__(mm, source)
    self.reads = []

  def _read(self, rows_R):
    self.reads.append(np.array(rows_R))
    return super()._read(rows_R)


def test_mapped_rows_read_only_the_rows_indexed(problem, tmp_path):
  params, q, db, top = problem
  np.save(tmp_path / "db.npy", db)
  rows = Recorder(np.load(tmp_path / "db.npy", mmap_mode="r"), "db.npy")
  assert rows.shape == (NDB, C) and len(rows) == NDB
  idx = np.array([[3, 70], [5, 3]])
  np.testing.assert_array_equal(rows[idx], db[idx])
  assert [r.tolist() for r in rows.reads] == [[3, 70, 5, 3]]
  for bad in (np.array([-1]), np.array([NDB])):
    with pytest.raises(IndexError):  # never wrapped, never clamped
      rows[bad]
  rows.reads.clear()
  got, scores = rerank_shortlist(q, rows, top, (params, CFG), K, batch_size=2)
  want = rerank_shortlist(q, db, top, (params, CFG), K, batch_size=2)
  np.testing.assert_array_equal(got, want[0])
  np.testing.assert_array_equal(scores, want[1])
  read = np.concatenate(rows.reads)
  assert set(read.tolist()) == set(top[:, :NEED].ravel().tolist())


def test_mapped_rows_check_each_row_read(problem, tmp_path, caplog):
  db = problem[2].copy()
  db[10] = np.nan
  db[11] = 0
  db[12] *= 4
  np.save(tmp_path / "db.npy", db)
  rows = MappedRows(np.load(tmp_path / "db.npy", mmap_mode="r"), "db.npy")
  np.testing.assert_array_equal(rows[np.array([0, 1])], db[:2])  # bad rows elsewhere: unread
  with pytest.raises(InputError, match=r"^db\.npy: db\[10\]: expected finite values"):
    rows[np.array([3, 10])]
  with pytest.raises(InputError, match=r"^db\.npy: db\[11\]: expected non-zero descriptors"):
    rows[np.array([11])]
  with caplog.at_level(logging.WARNING, logger="csa_jax"):
    got = rows[np.array([12, 13])]
  np.testing.assert_allclose(got, problem[2][12:14], atol=1e-6)
  assert "db[12] has norm 4" in caplog.text


def test_first_round_scores_are_dot_products_and_nan_for_padding(problem, tmp_path):
  _, q, db, top = problem
  pad = top.copy()
  pad[2, 9:] = -1
  np.save(tmp_path / "db.npy", db)
  rows = Recorder(np.load(tmp_path / "db.npy", mmap_mode="r"))
  got = first_round_scores(q, rows, pad, K)
  want = np.take_along_axis(q.astype(np.float64) @ db.T.astype(np.float64), top, 1)[:, K:]
  assert np.isnan(got[2, 9 - K:]).all() and np.isfinite(got[[0, 1, 3, 4]]).all()
  np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(got)], rtol=0, atol=1e-7)
  read = set(np.concatenate(rows.reads).tolist())
  assert read == set(pad[:, K:][pad[:, K:] >= 0].tolist())


# The user's ids files.


def test_load_first_round_from_every_format(problem, tmp_path):
  top = problem[3].copy()
  top[1, 10:] = -1
  np.save(tmp_path / "a.npy", top.astype(np.int32))
  np.savez(tmp_path / "b.npz", ids=top, scores=np.zeros(top.shape, np.float32))
  (tmp_path / "c.json").write_text(json.dumps(top.tolist()))
  (tmp_path / "d.csv").write_text("\n".join(",".join(map(str, r)) for r in top) + "\n")
  (tmp_path / "e.txt").write_text("\n".join(" ".join(map(str, r)) for r in top) + "\n\n")
  for name in ("a.npy", "b.npz", "c.json", "d.csv", "e.txt"):
    got = user_rerank.load_first_round(tmp_path / name, NQ, NDB, K, CFG.anchors)
    assert got.dtype == np.int64, name
    np.testing.assert_array_equal(got, top, err_msg=name)


@pytest.mark.parametrize("case", ["float", "queries", "ragged_txt", "token", "ragged_json",
                                  "dup", "late_pad"])
def test_load_first_round_refuses_with_one_line(problem, tmp_path, case):
  top = problem[3].copy()
  path = tmp_path / "ids.npy"
  if case == "float":
    np.save(path, top.astype(np.float64))
    want = r"ids\.npy: ids: expected integer db ids, found dtype float64"
  elif case == "queries":
    np.save(path, top[:4])
    want = r"ids\.npy: ids: expected one row per query \(Q=5\), found 4 rows"
  elif case == "ragged_txt":
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(" ".join(map(str, r[:T - (i == 3)])) for i, r in enumerate(top)))
    want = r"ids\.txt: ids\[3\]: expected T = 14 ids, as the first row .*found 13"
  elif case == "token":
    path = tmp_path / "ids.csv"
    path.write_text("query,rank\n1,2\n")
    want = r"ids\.csv: line 1: expected integer db ids .*found 'query'"
  elif case == "ragged_json":
    path = tmp_path / "ids.json"
    path.write_text(json.dumps([[1, 2, 3], [4, 5]]))
    want = r"ids\.json: ids: expected a \(Q, T\) array of integer db ids"
  elif case == "dup":
    top[0, 13] = top[0, 0]
    np.save(path, top)
    want = r"ids\.npy: ids\[0\]: expected distinct db ids in a row"
  else:
    top[4, 8] = -1
    np.save(path, top)
    want = r"ids\.npy: ids\[4, 8\]: expected .* -1 only as padding after a row's last id"
  with pytest.raises(InputError, match=want) as e:
    user_rerank.load_first_round(path, NQ, NDB, K, CFG.anchors)
  assert "\n" not in str(e.value)


def test_map_database_maps_a_float32_npy_and_reads_others(problem, tmp_path):
  db = problem[2]
  np.save(tmp_path / "db.npy", db)
  mapped = user_rerank.map_database(tmp_path / "db.npy")
  assert isinstance(mapped, MappedRows) and mapped.shape == (NDB, C)
  np.savez(tmp_path / "db.npz", db=db)
  np.save(tmp_path / "db64.npy", db.astype(np.float64))
  for name in ("db.npz", "db64.npy"):  # not mappable as float32 rows: read and checked whole
    got = user_rerank.map_database(tmp_path / name)
    assert isinstance(got, np.ndarray) and not isinstance(got, np.memmap)
    np.testing.assert_allclose(got, db, atol=1e-7)
  assert first_round.needed(K, CFG.anchors) == NEED
  with pytest.raises(InputError, match=re.escape("db.npy: db[0]: expected finite values")):
    db2 = db.copy()
    db2[0, 0] = np.inf
    np.save(tmp_path / "db.npy", db2)
    user_rerank.map_database(tmp_path / "db.npy")[np.array([0])]


def test_exact_order_sorts_an_engines_candidates_by_dot_product(problem):
  _, q, db, top = problem
  rng = np.random.default_rng(5)
  shuffled = np.stack([rng.permutation(r) for r in top])
  shuffled[3, 11:] = -1
  got = first_round.exact_order(q, db, shuffled)
  for i in range(NQ):
    keep = shuffled[i] >= 0
    want = top[i][np.isin(top[i], shuffled[i][keep])]  # the exact order of what is there
    np.testing.assert_array_equal(got[i, :keep.sum()], want)
    assert (got[i, keep.sum():] == -1).all()
