"""Outputs against inputs, and output formats, the way a clumsy user or an attacker meets them.

An output on an input (the same path, a hard link, a symlink, a file that lands beside --out) is
refused before any work, in one line, every input byte-identical and nothing left behind; a name
that a spreadsheet would run is neutralised in ranks.csv; an error quoting a name with a line
break is still one line.
"""

import csv
import json
import os
import pickle
import shutil

import numpy as np
import pytest

from hostile_cli import assert_tree_unchanged, expect_input_error, run_cli, tree_snapshot

from toy_retrieval import queries_and_db, spread_params

from csa_jax.cli import rerank as rerank_cmd
from csa_jax.core.config import ModelConfig
from csa_jax.interop.export import save_export

C, NQ, NDB = 16, 3, 20
CFG = ModelConfig(anchors=4, dim=16, depth=1, heads=2)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """Valid inputs for rerank and eval (a run without the checks would go ahead and write)."""
  d = tmp_path_factory.mktemp("inputs")
  q, db = queries_and_db(np.random.default_rng(0), NQ, NDB, C)
  np.savez(d / "q.npz", query=q)
  np.savez(d / "db.npz", db=db)
  np.savez(d / "feats.npz", db=db, query=q)
  gnd = [{"easy": [i], "hard": [i + 5], "junk": []} for i in range(NQ)]
  (d / "gnd.json").write_text(json.dumps({"gnd": gnd}))
  (d / "names.json").write_text(json.dumps([f"query {i}" for i in range(NQ)]))
  with open(d / "gnd.pkl", "wb") as f:
    pickle.dump({"gnd": gnd, "imlist": [f"db{i}" for i in range(NDB)],
                 "qimlist": [f"q{i}" for i in range(NQ)]}, f)
  save_export(d / "model.npz", spread_params(CFG, np.random.default_rng(1)), CFG)
  return d


@pytest.fixture
def work(source, tmp_path):
  d = tmp_path / "w"
  shutil.copytree(source, d)
  return d


def _rerank(*extra):
  return ["rerank", "--query", "q.npz", "--db", "db.npz", "--model", "model.npz", "--K", "4",
          *extra]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["same_file", "names_beside", "hard_link"])
def test_rerank_output_on_an_input_is_refused(work, case):
  if case == "same_file":  # the descriptors would be replaced by the ranking
    args, needles = _rerank("--out", "q.npz"), ["q.npz", "--out", "--query"]
  elif case == "names_beside":  # ranks.json would land on the names file
    args = _rerank("--query-names", "names.json", "--out", "names.npz")
    needles = ["names.json", "--out", "--query-names"]
  else:
    os.link(work / "db.npz", work / "ranks.npz")
    args, needles = _rerank("--out", "ranks.npz"), ["ranks.npz", "--out", "--db"]
  before = tree_snapshot(work)
  expect_input_error(run_cli(args, work), *needles)
  assert_tree_unchanged(before, work)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gnd", "symlink"])
def test_eval_output_on_an_input_is_refused(work, case):
  if case == "gnd":  # the ground truth would be replaced by the results
    out, needles = "gnd.json", ["gnd.json", "--out", "--gnd"]
  else:
    os.symlink("feats.npz", work / "results.json")
    out, needles = "results.json", ["results.json", "--out", "--features"]
  before = tree_snapshot(work)
  res = run_cli(["eval", "--features", "feats.npz", "--gnd", "gnd.json", "--model", "model.npz",
                 "--K", "4", "--out", out], work)
  expect_input_error(res, *needles)
  assert_tree_unchanged(before, work)


@pytest.mark.slow
def test_convert_data_output_on_its_source_is_refused(work):
  before = tree_snapshot(work)
  expect_input_error(run_cli(["convert-data", "gnd.pkl", "--out", "gnd.pkl"], work),
                     "gnd.pkl", "--out", "SRC")
  assert_tree_unchanged(before, work)


@pytest.mark.slow
@pytest.mark.parametrize("sep,shown", [("\n", "\\n"), ("\u2028", "\\u2028")])
def test_a_line_break_in_a_dataset_name_keeps_the_error_one_line(tmp_path, sep, shown):
  (tmp_path / "root" / "test").mkdir(parents=True)
  before = tree_snapshot(tmp_path)
  res = run_cli(["eval", "--data", "root", "--features", "gl18", "--datasets",
                 f"rox{sep}ford5k"], tmp_path)
  line = expect_input_error(res, f"rox{shown}ford5k")
  assert [l for l in res.stderr.splitlines() if "ford5k" in l] == [line]  # nothing split off
  assert_tree_unchanged(before, tmp_path)


def test_ranks_csv_neutralises_formulas_and_json_keeps_the_names(tmp_path):
  qnames = ["=HYPERLINK(\"http://x\")", "+1", "plain"]
  dbnames = ["-2+3", "@SUM(A1)", "\tTAB", "\rCR", "ok=1", "a, b", "'quoted"]
  ids = np.array([[0, 1, 2], [3, 4, 5], [6, 0, 1]], np.int64)
  scores = np.array([[0.9, -0.5, 0.1]] * 3, np.float32)
  paths = rerank_cmd.output_paths(str(tmp_path / "ranks.npz"), names=True)
  rerank_cmd.write_outputs(paths, ids, scores, np.tile(np.arange(1, 4), (3, 1)), 2,
                           {"command": "test"}, qnames, dbnames)
  with open(paths[2], newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))[1:]
  cells = {r[0] for r in rows} | {r[2] for r in rows}
  assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
  assert {r[0] for r in rows} == {"'=HYPERLINK(\"http://x\")", "'+1", "plain"}
  assert {r[2] for r in rows} == {"'-2+3", "'@SUM(A1)", "'\tTAB", "'\rCR", "ok=1", "a, b",
                                  "'quoted"}
  assert [r[3] for r in rows[:3]] == ["0.9", "-0.5", "0.1"]  # scores stay numbers
  doc = json.loads(open(paths[1], encoding="utf-8").read())
  assert [q["query"] for q in doc["queries"]] == qnames
  assert {e["db"] for q in doc["queries"] for e in q["ranking"]} == set(dbnames)
