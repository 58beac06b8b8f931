"""host_search: the numpy running top-T and the BLAS block loop against a stable argsort."""

import numpy as np
import pytest

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
