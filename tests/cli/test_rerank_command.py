"""``csa-jax rerank``: a user's own queries and database, re-ranked, against eval and
rerank_shortlist."""

import csv
import json
import pathlib

import numpy as np
import pytest

from hostile_cli import expect_input_error, expect_ok, leftover_temp_files, run_cli

from toy_retrieval import queries_and_db, spread_params

from csa_jax import fileio
from csa_jax.cli import main as cli
from csa_jax.cli import rerank as rerank_cmd
from csa_jax.core.config import ModelConfig
from csa_jax.evaluation.revisited import PROTOCOLS, percent, revisited_map_from_scores
from csa_jax.interop.export import save_export
from csa_jax.retrieval.rerank import rerank_shortlist
from csa_jax.retrieval.search import top_k_search

C, NQ, NDB, K, T = 16, 5, 60, 6, 10
CFG = ModelConfig(anchors=8, dim=16, depth=1, heads=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("rerank")
  q, db = queries_and_db(np.random.default_rng(0), NQ, NDB, C, near=25)
  gnd = [{"easy": list(range(5 * i, 5 * i + 2)), "hard": list(range(5 * i + 2, 5 * i + 4)) + [40],
          "junk": [5 * i + 4]} for i in range(NQ)]
  dbnames = [f"db/img_{i:03d}.jpg" for i in range(NDB)]
  qnames = [f"query, {i}" for i in range(NQ)]  # a comma: the CSV must quote it
  (d / "gnd_toy.json").write_text(json.dumps({"imlist": dbnames, "qimlist": qnames, "gnd": gnd}))
  (d / "qnames.txt").write_text("\n".join(qnames) + "\n")
  np.save(d / "q.npy", q)
  np.save(d / "db.npy", db)
  np.savez(d / "feats.npz", db=db, query=q)
  params = spread_params(CFG, np.random.default_rng(1))
  save_export(d / "model.npz", params, CFG)
  return d, q, db, gnd, params, qnames, dbnames


@pytest.fixture(scope="module")
def ranked(files):
  """One subprocess run with names: (ids, scores, run JSON, out dir)."""
  d = files[0]
  out = d / "out"
  res = run_cli(["rerank", "--query", d / "q.npy", "--db", d / "db.npy", "--model",
                 d / "model.npz", "--K", K, "--T", T, "--batch-size", 3, "--query-names",
                 d / "qnames.txt", "--db-names", d / "gnd_toy.json", "--out", out / "ranks.npz"],
                d)
  expect_ok(res)
  assert "memory-mapped" in res.stderr
  z = np.load(out / "ranks.npz", allow_pickle=False)
  assert sorted(z.files) == ["first_round_rank", "ids", "run", "scores"]
  return z["ids"], z["scores"], json.loads(str(z["run"])), out, z["first_round_rank"]


def test_rerank_is_rerank_shortlist_of_first_round(files, ranked):
  _, q, db, _, params, _, _ = files
  ids, scores, run, _, first_rank = ranked
  assert ids.shape == scores.shape == first_rank.shape == (NQ, T)
  assert ids.dtype == np.int64 and scores.dtype == np.float32
  first = np.argsort(-(q.astype(np.float64) @ db.T.astype(np.float64)), axis=1, kind="stable")
  for i in range(NQ):
    assert sorted(ids[i, :K]) == sorted(first[i, :K])  # a permutation of the top-K
  np.testing.assert_array_equal(ids[:, K:], first[:, K:T])  # the tail: first-round order
  # Each entry's first-round rank, by hand from the first-round order.
  np.testing.assert_array_equal(np.take_along_axis(first, first_rank - 1, 1), ids)
  assert (first_rank[:, :K] != np.arange(1, K + 1)).any()  # CSA moved something
  _, top = top_k_search(q, db, T)
  np.testing.assert_array_equal(ids, rerank_shortlist(q, db, top, (params, CFG), K)[0])
  assert np.all(np.diff(scores[:, :K], axis=1) <= 0)
  np.testing.assert_allclose(scores[:, K:], np.take_along_axis(q @ db.T, ids[:, K:], 1),
                             atol=1e-6)
  assert run["config"]["K"] == K and run["config"]["T"] == T and run["command"].startswith(
      "csa-jax rerank --query ")
  assert run["config"]["model_config"]["anchors"] == CFG.anchors


@pytest.mark.slow
def test_rerank_equals_evals_reranking(files, ranked):
  d, q, db, gnd = files[:4]
  ids = ranked[0]
  res = run_cli(["eval", "--features", d / "feats.npz", "--gnd", d / "gnd_toy.json", "--model",
                 d / "model.npz", "--K", K, "--out", d / "eval.json"], d)
  expect_ok(res)
  js = json.loads((d / "eval.json").read_text())
  assert js["K"] == K and "run" in js
  # eval's CSA APs are those of rerank's top-K placed first, every other image by score.
  mine = revisited_map_from_scores(q @ db.T, gnd, top_QxK=ids[:, :K])
  for p in PROTOCOLS:
    got = np.array(js["csa"][p]["aps"], dtype=float)
    np.testing.assert_allclose(got, percent(mine[p]["aps"], None), rtol=1e-9, err_msg=p)


def test_names_json_and_csv(files, ranked):
  qnames, dbnames = files[5], files[6]
  ids, scores, run, out, first_rank = ranked
  with open(out / "ranks.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["query", "rank", "db", "score", "score_from", "first_round_rank"]
  assert len(rows) == 1 + NQ * T
  for n, (qn, rank, dn, s, by, fr) in enumerate(rows[1:]):
    i, r = divmod(n, T)
    assert (qn, int(rank), dn) == (qnames[i], r + 1, dbnames[ids[i, r]])
    assert np.float32(s) == scores[i, r]  # exact: the float32's shortest repr
    assert by == ("csa" if r < K else "first_round") and int(fr) == first_rank[i, r]
  js = json.loads((out / "ranks.json").read_text(encoding="utf-8"))
  assert js["run"] == run and "CSA score" in js["scores"]
  assert [e["query"] for e in js["queries"]] == qnames
  for i, e in enumerate(js["queries"]):
    assert [x["rank"] for x in e["ranking"]] == list(range(1, T + 1))
    assert [x["db"] for x in e["ranking"]] == [dbnames[j] for j in ids[i]]
    assert [x["first_round_rank"] for x in e["ranking"]] == first_rank[i].tolist()
    assert [x["score_from"] for x in e["ranking"]] == ["csa"] * K + ["first_round"] * (T - K)
    np.testing.assert_array_equal(np.float32([x["score"] for x in e["ranking"]]), scores[i])
  assert leftover_temp_files(out) == []


def test_features_file_for_both_and_db_names_only(files, tmp_path, capsys):
  d, dbnames = files[0], files[6]
  (tmp_path / "names.json").write_text(json.dumps(dbnames))
  rc = cli.main(["rerank", "--query", str(d / "feats.npz"), "--db", str(d / "feats.npz"),
                 "--model", str(d / "model.npz"), "--K", str(K), "--db-names",
                 str(tmp_path / "names.json"), "--out", str(tmp_path / "r.npz")])
  assert rc == 0, capsys.readouterr().err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["names.json", "r.csv", "r.json", "r.npz"]
  rows = list(csv.reader((tmp_path / "r.csv").read_text().splitlines()))
  assert [r[0] for r in rows[1:K + 1]] == ["0"] * K  # no query names: the query's index


@pytest.mark.parametrize("bad", ["t_below_k", "width", "names_count", "out_under_file",
                                 "model_missing", "out_not_npz"])
@pytest.mark.slow
def test_bad_input_one_line_exit_2(files, tmp_path, bad):
  d = files[0]
  (tmp_path / "afile").write_text("x")
  out = tmp_path / "o" / "ranks.npz"
  args = {"--query": d / "q.npy", "--db": d / "db.npy", "--model": d / "model.npz", "--K": K,
          "--out": out}
  if bad == "t_below_k":
    args["--T"], want = K - 1, ["command line: --T: expected T >= K = 6", "found 5"]
  elif bad == "width":
    np.save(tmp_path / "q8.npy", files[1][:, :8])
    args["--query"], want = tmp_path / "q8.npy", ["q8.npy: query: expected descriptor size C=16"]
  elif bad == "names_count":
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")
    args["--query-names"], want = tmp_path / "four.txt", [
        "four.txt: qimlist: expected 5 names (one per descriptor), found 4 names"]
  elif bad == "out_under_file":
    args["--out"], want = tmp_path / "afile" / "r.npz", [
        "r.npz: --out: expected a path whose parent is a directory"]
  elif bad == "model_missing":
    args["--model"], want = tmp_path / "nope.npz", ["nope.npz: file: expected a model"]
  else:
    args["--out"], want = tmp_path / "r.json", ["r.json: --out: expected a path ending in .npz"]
  before = sorted(tmp_path.iterdir())
  res = run_cli(["rerank"] + [str(x) for kv in args.items() for x in kv], tmp_path)
  expect_input_error(res, *want)
  assert sorted(tmp_path.iterdir()) == before  # nothing written, not even the output folder


def test_failed_write_leaves_nothing(files, tmp_path, monkeypatch, capsys):
  d = files[0]

  def full_disk(*a):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(rerank_cmd, "_table", full_disk)  # the npz is written, then the CSV fails
  rc = cli.main(["rerank", "--query", str(d / "q.npy"), "--db", str(d / "db.npy"), "--model",
                 str(d / "model.npz"), "--K", str(K), "--query-names", str(d / "qnames.txt"),
                 "--out", str(tmp_path / "r.npz")])
  err = capsys.readouterr().err
  assert rc == 2 and err.strip().splitlines()[-1].endswith(
      "r.npz: --out: expected a writable file, found No space left on device")
  assert list(tmp_path.iterdir()) == []


def test_atomic_paths_all_or_nothing(tmp_path):
  (tmp_path / "b").mkdir()  # renaming onto a directory fails: the first target is taken back
  with pytest.raises(OSError), fileio.atomic_paths([tmp_path / "a", tmp_path / "b"]) as tmps:
    for t in tmps:
      pathlib.Path(t).write_text("1")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
  with fileio.atomic_paths([tmp_path / "c", tmp_path / "d"]) as (tc, td):
    pathlib.Path(tc).write_text("1")
    pathlib.Path(td).write_text("2")
  assert (tmp_path / "c").read_text() == "1" and (tmp_path / "d").read_text() == "2"
  assert leftover_temp_files(tmp_path) == []
