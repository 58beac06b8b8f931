"""``csa-jax rerank --first-round``: a user's own first round, re-ranked as ``rerank_shortlist``
re-ranks it, reading only the database rows it names."""

import csv
import json
import os

import numpy as np
import pytest

from toy_retrieval import queries_and_db, spread_params

from csa_jax.cli import main as cli
from csa_jax.core.config import ModelConfig
from csa_jax.formats import npyio
from csa_jax.interop.export import save_export
from csa_jax.retrieval.rerank import rerank_shortlist

C, NQ, NDB, K, T = 16, 5, 60, 6, 12
CFG = ModelConfig(anchors=8, dim=16, depth=1, heads=2)
NEED = max(K, CFG.anchors - 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("first_round")
  rng = np.random.default_rng(0)
  q, db = queries_and_db(rng, NQ, NDB, C, near=25)
  np.save(d / "q.npy", q)
  np.save(d / "db.npy", db)
  params = spread_params(CFG, np.random.default_rng(1))
  save_export(d / "model.npz", params, CFG)
  # Some engine's first round: not the exact order, one row padded after 9 ids.
  exact = np.argsort(-(q @ db.T), axis=1, kind="stable")
  ids = np.stack([rng.permutation(exact[i, :T + 4])[:T] for i in range(NQ)]).astype(np.int64)
  ids[2, 9:] = -1
  np.save(d / "ids.npy", ids)
  return d, q, db, params, ids


def rerank(d, *extra, out="r.npz", db="db.npy"):
  return cli.main(["rerank", "--query", str(d / "q.npy"), "--db", str(d / db), "--model",
                   str(d / "model.npz"), "--K", str(K), "--batch-size", "3", "--out",
                   str(d / out), *map(str, extra)])


@pytest.fixture(scope="module")
def ranked(files):
  d = files[0]
  (d / "qnames.txt").write_text("".join(f"q{i}\n" for i in range(NQ)))
  assert rerank(d, "--first-round", d / "ids.npy", "--query-names", d / "qnames.txt") == 0
  z = np.load(d / "r.npz", allow_pickle=False)
  return z["ids"], z["scores"], json.loads(str(z["run"])), z["first_round_rank"]


def test_first_round_is_rerank_shortlist_of_the_same_ids(files, ranked):
  _, q, db, params, ids_in = files
  ids, scores, run, first_rank = ranked
  assert ids.shape == scores.shape == ids_in.shape and ids.dtype == np.int64
  np.testing.assert_array_equal(np.take_along_axis(ids_in, first_rank - 1, 1), ids)
  want, want_scores = rerank_shortlist(q, db, ids_in, (params, CFG), K, batch_size=3)
  np.testing.assert_array_equal(ids, want)
  np.testing.assert_array_equal(scores[:, :K], want_scores)
  # Ranks K+1..T: the descriptors' dot products in the engine's order; padding -1 with NaN.
  np.testing.assert_array_equal(ids[:, K:], ids_in[:, K:])
  valid = ids[:, K:] >= 0
  dots = np.take_along_axis(q @ db.T, np.where(valid, ids[:, K:], 0), 1)
  np.testing.assert_allclose(scores[:, K:][valid], dots[valid], atol=1e-6)
  assert np.isnan(scores[2, 9:]).all() and (ids[2, 9:] == -1).all()
  assert int(np.isnan(scores).sum()) == T - 9
  assert run["config"]["first_round"].endswith("ids.npy") and run["config"]["T"] == T
  assert "NaN" in run["config"]["scores"]


def test_json_and_csv_leave_padding_out(files, ranked):
  d = files[0]
  ids = ranked[0]
  rows = list(csv.reader((d / "r.csv").read_text().splitlines()))[1:]
  assert len(rows) == NQ * T - (T - 9)
  assert [int(r[2]) for r in rows if r[0] == "q2"] == ids[2, :9].tolist()
  js = json.loads((d / "r.json").read_text())
  assert [e["query"] for e in js["queries"]] == [f"q{i}" for i in range(NQ)]
  assert [len(e["ranking"]) for e in js["queries"]] == [T, T, 9, T, T]
  assert all(np.isfinite(x["score"]) for e in js["queries"] for x in e["ranking"])
  assert all(r[2] != "-1" and r[3] != "nan" for r in rows)


def test_an_exact_first_round_gives_the_exact_search_ranking(files, tmp_path):
  d, q, db = files[:3]
  exact = np.argsort(-(q.astype(np.float64) @ db.T.astype(np.float64)), axis=1, kind="stable")
  np.save(d / "exact.npy", exact[:, :T])
  assert rerank(d, "--T", T, out="search.npz") == 0
  assert rerank(d, "--first-round", d / "exact.npy", out="given.npz") == 0
  a, b = np.load(d / "search.npz"), np.load(d / "given.npz")
  np.testing.assert_array_equal(a["ids"], b["ids"])
  np.testing.assert_array_equal(a["scores"][:, :K], b["scores"][:, :K])
  np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)


class SpyMap(np.memmap):
  """A memory map that records the rows every index into it selects."""
  reads: list = []

  def __getitem__(self, idx):
    rows = idx[0] if isinstance(idx, tuple) else idx
    SpyMap.reads.append(np.arange(self.shape[0])[rows].ravel())
    return super().__getitem__(idx)


def test_only_the_rows_named_are_read(files, tmp_path, monkeypatch, capsys):
  """A 200k-row database file whose every unnamed row is NaN: a full scan, or any use of a row
  the first round does not name, fails the command; every index into the map is recorded."""
  db = files[2]
  n = 200_000
  rng = np.random.default_rng(3)
  ids = rng.choice(n, size=(NQ, T), replace=False).astype(np.int64)
  ids[4, 10:] = -1
  needed = set(ids[ids >= 0].tolist())
  big = np.lib.format.open_memmap(tmp_path / "big.npy", "w+", np.float32, (n, C))
  big[:] = np.nan
  used = sorted(needed)
  big[used] = db[np.arange(len(used)) % NDB]
  big.flush()
  del big
  np.save(tmp_path / "ids.npy", ids)
  for name in ("q.npy", "model.npz"):
    (tmp_path / name).write_bytes((files[0] / name).read_bytes())
  real = npyio.load_npy
  monkeypatch.setattr(npyio, "load_npy", lambda path, mmap=False: (
      real(path, mmap).view(SpyMap) if mmap and str(path).endswith("big.npy")
      else real(path, mmap)))
  monkeypatch.setattr(SpyMap, "reads", [])
  rc = rerank(tmp_path, "--first-round", tmp_path / "ids.npy", db="big.npy")
  assert rc == 0, capsys.readouterr().err
  read = np.concatenate(SpyMap.reads)
  assert set(read.tolist()) == needed
  # Each row once per use: CSA's batches (first max(K, L-1) columns) and the tail's scores.
  assert len(read) <= 2 * len(needed)
  got = np.load(tmp_path / "r.npz")["ids"]
  np.testing.assert_array_equal(got[:, K:], ids[:, K:])
  # The default mode scans the whole file up front: the NaN rows stop it.
  rc = rerank(tmp_path, db="big.npy", out="search.npz")
  assert rc == 2 and "expected finite values" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["late_pad", "dup", "range", "short", "float", "queries",
                                  "fifo", "t_flag", "faiss_params", "block"])
def test_bad_first_round_is_one_line_exit_2(files, tmp_path, capsys, case):
  d, _, _, _, ids = files
  ids = ids.copy()
  extra = []
  if case == "late_pad":
    ids[0, 7] = -1
    want = "ids.npy: ids[0, 7]: expected db ids in [0, N=60) (0-based), -1 only as padding " \
           "after a row's last id, found -1 before db id"
  elif case == "dup":
    ids[3, 11] = ids[3, 1]
    want = f"ids.npy: ids[3]: expected distinct db ids in a row (a duplicate means a broken " \
           f"first round), found id {ids[3, 1]} twice (columns 1 and 11)"
  elif case == "range":
    ids[1, 4] = NDB
    want = "ids.npy: ids[1, 4]: expected db ids in [0, N=60) (0-based), -1 only as padding " \
           "after a row's last id, found 60"
  elif case == "short":
    ids[4, 5:] = -1
    want = "ids.npy: ids[4]: expected at least max(K, L-1) = 7 db ids before any -1 padding"
  elif case == "float":
    ids = ids.astype(np.float32)
    want = "ids.npy: ids: expected integer db ids, found dtype float32"
  elif case == "queries":
    ids = ids[:3]
    want = "ids.npy: ids: expected one row per query (Q=5), found 3 rows"
  elif case == "fifo":
    ids = None
    want = "ids.npy: file: expected a regular file, found a FIFO (named pipe)"
  elif case == "t_flag":
    extra, want = ["--T", T], "command line: --T: expected no --T with --first-round"
  elif case == "faiss_params":
    extra, want = ["--faiss-params", "nprobe=4"], "--faiss-params: expected --faiss FACTORY"
  else:
    extra, want = ["--block", 16], "command line: --block: expected no --block with --first-round"
  if ids is None:
    os.mkfifo(tmp_path / "ids.npy")  # read as a file, it would block forever
  else:
    np.save(tmp_path / "ids.npy", ids)
  for name in ("q.npy", "db.npy", "model.npz"):
    (tmp_path / name).write_bytes((d / name).read_bytes())
  before = sorted(p.name for p in tmp_path.iterdir())
  first = [] if case == "faiss_params" else ["--first-round", tmp_path / "ids.npy"]
  assert rerank(tmp_path, *first, *extra) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("csa-jax rerank: error: ") and want in err[-1], err[-1]
  assert "Traceback" not in "\n".join(err)
  assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
