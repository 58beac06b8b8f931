"""host_search: the numpy running top-T and the BLAS workers against a stable argsort."""

import threading

import numpy as np
import pytest

from csa_jax.errors import InputError
from csa_jax.retrieval import host_search, search


def reference(scores_QxN, t):
  idx = np.argsort(-scores_QxN, axis=1, kind="stable")[:, :t]
  return np.take_along_axis(scores_QxN, idx, 1), idx


def run_blocks(s_QxN, t, block):
  top = host_search.RunningTopT(s_QxN.shape[0], t)
  for a in range(0, s_QxN.shape[1], block):
    top.add(s_QxN[:, a:a + block], a)
  return top.result()


@pytest.mark.parametrize("t,block", [(1, 7), (5, 64), (20, 13), (20, 500), (100, 90), (300, 300)])
def test_running_top_t_ties(t, block):
  # Few distinct values: most scores tie, with each other and with the running T-th.
  rng = np.random.default_rng(t * 1000 + block)
  s = rng.integers(-3, 4, (6, 300)).astype(np.float32)
  got_v, got_i = run_blocks(s, t, block)
  want_v, want_i = reference(s, t)
  np.testing.assert_array_equal(got_i, want_i)
  np.testing.assert_array_equal(got_v, want_v)
  assert got_v.dtype == np.float32 and got_i.dtype == np.int32


def test_rising_scores_fill_and_compact_the_pool():
  # Every block beats the whole list: the pools fill and are sorted again and again.
  s = np.tile(np.arange(2000, dtype=np.float32) // 3, (4, 1))
  s[1] = -s[1]
  got_v, got_i = run_blocks(s, 50, 37)
  want_v, want_i = reference(s, 50)
  np.testing.assert_array_equal(got_i, want_i)
  np.testing.assert_array_equal(got_v, want_v)


def test_all_equal_block_grows_the_pool():
  # A block's T-th ties with the whole block: every score is kept until the lower indices win.
  s = np.zeros((3, 1000), np.float32)
  s[2, 900:] = 1
  top = host_search.RunningTopT(3, 10)
  for a in range(0, 1000, 400):
    top.add(s[:, a:a + 400], a)
  assert top.v_QxP.shape[1] > 2 * 10  # the pool had to grow past its usual size
  got_v, got_i = top.result()
  np.testing.assert_array_equal(got_i, reference(s, 10)[1])
  np.testing.assert_array_equal(got_v, reference(s, 10)[0])


def test_infinite_and_nan_scores():
  # -inf is a real score (it enters while a list has room); NaN never enters.
  s = np.array([[np.nan, -np.inf, 2, np.nan, -np.inf, 1, np.inf, np.nan]], np.float32)
  got_v, got_i = run_blocks(s, 5, 3)
  np.testing.assert_array_equal(got_i, [[6, 2, 5, 1, 4]])
  np.testing.assert_array_equal(got_v, [[np.inf, 2, 1, -np.inf, -np.inf]])
  got_v, got_i = run_blocks(np.full((2, 4), np.nan, np.float32), 2, 3)
  np.testing.assert_array_equal(got_i, np.full((2, 2), host_search.NO_INDEX))
  assert np.all(got_v == -np.inf)


@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
def test_host_top_k_scores_out_and_blocks(tmp_path, out_dtype):
  # float64 scores_out takes the buffer path, a float32 memmap the direct one.
  rng = np.random.default_rng(3)
  db = rng.integers(-2, 3, (500, 12)).astype(np.float32)
  q = rng.integers(-2, 3, (4, 12)).astype(np.float32)
  s = q @ db.T
  if out_dtype == np.float32:
    out = np.lib.format.open_memmap(tmp_path / "s.npy", "w+", np.float32, s.shape)
  else:
    out = np.full(s.shape, np.nan, out_dtype)
  v, i = host_search.host_top_k(q, search._Rows(db), len(db), 33, block=64, scores_out=out)
  np.testing.assert_array_equal(np.asarray(out), s)
  want_v, want_i = reference(s, 33)
  np.testing.assert_array_equal(i, want_i)
  np.testing.assert_array_equal(v, want_v)


@pytest.mark.parametrize("workers,block,t", [(2, 7, 5), (3, 50, 40), (4, 13, 300), (5, 1, 3)])
def test_workers_equal_stable_argsort(workers, block, t):
  # Tie-heavy scores over many blocks shared out to several workers: each worker keeps its own
  # list, and the merge must still give ties to the lower db index.
  rng = np.random.default_rng(workers * 100 + block)
  db = rng.integers(-1, 2, (300, 6)).astype(np.float32)
  q = rng.integers(-1, 2, (5, 6)).astype(np.float32)
  out = np.full((5, 300), np.nan, np.float32)
  v, i = host_search.host_top_k(q, search._Rows(db), len(db), t, block=block, scores_out=out,
                                workers=workers)
  np.testing.assert_array_equal(out, q @ db.T)
  want_v, want_i = reference(q @ db.T, t)
  np.testing.assert_array_equal(i, want_i)
  np.testing.assert_array_equal(v, want_v)


def test_merge_lists_orders_ties_and_padding():
  v = np.array([[1, -np.inf, 2, 1, -np.inf, -np.inf]], np.float32)
  i = np.array([[9, 4, 7, 3, host_search.NO_INDEX, 8]], np.int32)
  got_v, got_i = host_search.merge_lists(v, i, 5)
  np.testing.assert_array_equal(got_i, [[7, 3, 9, 4, 8]])
  np.testing.assert_array_equal(got_v, [[2, 1, 1, -np.inf, -np.inf]])


def test_without_a_thread_blas_setting_one_worker_runs(monkeypatch):
  # Another BLAS (or an old OpenBLAS): one worker, the library's own threads.
  monkeypatch.setattr(host_search, "_thread_blas_setter", lambda: None)
  started = []
  real = host_search.threading.Thread
  monkeypatch.setattr(host_search.threading, "Thread",
                      lambda *a, **k: started.append(1) or real(*a, **k))
  rng = np.random.default_rng(5)
  db = rng.integers(-2, 3, (400, 8)).astype(np.float32)
  q = rng.integers(-2, 3, (3, 8)).astype(np.float32)
  _, i = host_search.host_top_k(q, search._Rows(db), len(db), 20, block=16)
  assert started == [1]
  np.testing.assert_array_equal(i, reference(q @ db.T, 20)[1])


def test_check_sees_every_block_once_and_the_lowest_failure_wins():
  rng = np.random.default_rng(6)
  db = rng.integers(-2, 3, (1000, 8)).astype(np.float32)
  q = rng.integers(-2, 3, (3, 8)).astype(np.float32)
  seen = []

  def record(a, x):
    np.testing.assert_array_equal(x, db[a:a + len(x)])
    seen.append((a, len(x)))

  host_search.host_top_k(q, search._Rows(db), len(db), 10, block=64, check=record, workers=3)
  assert sorted(seen) == [(a, min(64, 1000 - a)) for a in range(0, 1000, 64)]

  def refuse(a, x):  # blocks from row 320 on fail; a later one may fail first in time
    if a >= 320:
      raise InputError(f"block {a}")

  for _ in range(3):
    with pytest.raises(InputError, match=r"^block 320$"):
      host_search.host_top_k(q, search._Rows(db), len(db), 10, block=64, check=refuse,
                             workers=4)


def test_nonfinite_row_is_refused_by_any_worker(tmp_path):
  rng = np.random.default_rng(7)
  db = rng.standard_normal((900, 8)).astype(np.float32)
  db[[700, 455], 3] = np.inf, np.nan
  np.save(tmp_path / "db.npy", db)
  mm = np.load(tmp_path / "db.npy", mmap_mode="r")
  q = rng.standard_normal((2, 8)).astype(np.float32)
  with pytest.raises(InputError, match=r"db\.npy: db\[455\]: expected finite values"):
    host_search.host_top_k(q, search._Rows(mm), len(mm), 5, block=50, workers=3,
                           source=str(tmp_path / "db.npy"))


def test_workers_leave_the_blas_thread_count_as_it_was():
  # Some OpenBLAS builds set the process's count from any thread: put back after the search.
  setter = host_search._thread_blas_setter()
  if setter is None:
    pytest.skip("numpy's BLAS threads cannot be set here")
  rng = np.random.default_rng(9)
  db = rng.integers(-2, 3, (600, 8)).astype(np.float32)
  q = rng.integers(-2, 3, (3, 8)).astype(np.float32)
  before = setter(3)
  got = []
  try:
    _, i = host_search.host_top_k(q, search._Rows(db), len(db), 10, block=50, workers=2)
    # Searches overlapping in several threads: the count comes back after the last one.
    threads = [threading.Thread(target=lambda: got.append(host_search.host_top_k(
        q, search._Rows(db), len(db), 10, block=20, workers=3)[1])) for _ in range(3)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  finally:
    after = setter(before)
  assert after == 3
  for idx in [i] + got:
    np.testing.assert_array_equal(idx, reference(q @ db.T, 10)[1])
  assert len(got) == 3
