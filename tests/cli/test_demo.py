"""``csa-jax demo`` in its tiny size: the whole path runs and writes results.json as documented.
(The full demo's quality claim is measured by running it; see tools/README.md.)"""

import contextlib
import io
import json
import math
import shlex

import pytest

from csa_jax.cli import demo as demo_cli, main as cli
from csa_jax.errors import InputError
from csa_jax.experiments import demo


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo")
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    rc = cli.main(["demo", "--out", str(out), "--size", "tiny", "--seed", "3"])
  (out.parent / f"{out.name}.stdout").write_text(printed.getvalue())
  return out, rc


def test_results_json(tiny_run):
  out, rc = tiny_run
  assert rc == 0
  res = json.loads((out / "results.json").read_text())
  assert set(res) == {"first_round", "csa", "csa_bf16", "run"}
  assert res["run"]["seed"] == 3 and res["run"]["config"]["size"] == "tiny"
  assert res["run"]["versions"]["csa_jax"] and res["run"]["command"]
  for k in ("first_round", "csa", "csa_bf16"):
    assert set(res[k]) == {"easy", "medium", "hard"}
    assert all(isinstance(v, float) and math.isfinite(v) and 0 <= v <= 100
               for v in res[k].values())
  assert (out / "train" / "state_dict.npz").exists()


def test_results_are_the_evaluation_routines(tiny_run):
  # The demo's table is ``evaluate`` with the trained model, rounded once. (Runs before the
  # re-run test below, which replaces the directory.)
  from csa_jax.data import ground_truth
  from csa_jax.evaluation.evaluate import evaluate, mean_ap_percent
  from csa_jax.interop.export import load_model
  out, _ = tiny_run
  q, db, gnd = ground_truth.load_test_set(out / "data" / "test" / "synth5k" / "synth-gem.npz",
                                     out / "data" / "annotations" / "synth5k" / "gnd_synth5k.json")
  model = load_model(str(out / "train"))
  res = evaluate(q, db, gnd, model=model, K=demo.SIZES["tiny"][2], batch_size=demo.RERANK_BATCH)
  res16 = evaluate(q, db, gnd, model=model._replace(cfg=model.cfg.replace(dtype="bfloat16")),
                   K=demo.SIZES["tiny"][2], batch_size=demo.RERANK_BATCH)
  written = json.loads((out / "results.json").read_text())
  assert {k: v for k, v in written.items() if k != "run"} == {
      "first_round": mean_ap_percent(res["first_round"]), "csa": mean_ap_percent(res["csa"]),
      "csa_bf16": mean_ap_percent(res16["csa"])}
  # bfloat16 re-ranking keeps float32's mAP here (the full demo's figures: docs/benchmarks.md).
  for p in ("easy", "medium", "hard"):
    assert abs(written["csa_bf16"][p] - written["csa"][p]) <= 0.1


def test_the_demo_says_where_its_results_are_and_what_to_run_next(tiny_run):
  out, _ = tiny_run
  text = (out.parent / f"{out.name}.stdout").read_text()
  assert f"results: {out / 'results.json'}" in text
  eval_line = next(line for line in text.splitlines() if "csa-jax eval" in line)
  assert f"--data {out / 'data'}" in eval_line and f"--model {out / 'train'}" in eval_line
  assert "bfloat16 - float32" in text
  # The eval command it suggests gives the demo's table again.
  argv = shlex.split(eval_line.split("#")[0])
  assert argv[:2] == ["csa-jax", "eval"]
  assert cli.main(argv[1:] + ["--out", str(out.parent / f"{out.name}_eval.json")]) == 0
  evaluated = json.loads((out.parent / f"{out.name}_eval.json").read_text())["datasets"]
  written = json.loads((out / "results.json").read_text())
  (entry,) = evaluated.values()
  for key in ("first_round", "csa"):
    for p, v in written[key].items():
      assert entry[key][p]["map"] == pytest.approx(v, abs=0.01), (key, p)


def test_rerun_replaces_its_own_dir_and_refuses_others(tiny_run, tmp_path):
  out, _ = tiny_run
  (out / "train" / "stale").write_text("x")
  demo._prepare_out(str(out))  # a previous demo's directory: its data and train are replaced
  assert (out / demo.MARKER).exists() and (out / "neighbors").is_dir()
  assert not any((out / p).exists() for p in ("train", "data", "results.json"))
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(InputError, match="--out: expected a new or empty directory"):
    demo.run(str(tmp_path), "tiny")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_table_format():
  res = {"first_round": {"easy": 90.0, "medium": 60.5, "hard": 40.25},
         "csa": {"easy": 91.0, "medium": 70.0, "hard": 55.0}}
  lines = demo_cli.format_table(res, 128).splitlines()
  assert lines[1].split()[-3:] == ["90.00", "60.50", "40.25"]
  assert "K=128" in lines[2] and lines[2].split()[-3:] == ["91.00", "70.00", "55.00"]
  assert lines[3].split()[-3:] == ["+1.00", "+9.50", "+14.75"]
  res["csa_bf16"] = {"easy": 91.0, "medium": 69.9, "hard": 55.25}
  lines = demo_cli.format_table(res, 128).splitlines()
  assert "bfloat16" in lines[3] and lines[3].split()[-3:] == ["91.00", "69.90", "55.25"]
  assert lines[5].startswith("bfloat16 - float32") and lines[5].split()[-3:] == [
      "+0.00", "-0.10", "+0.25"]


def test_the_demo_trains_the_shipped_synthetic_recipe():
  # `csa-jax train --config synthetic` must reproduce the demo's training: the demo only adds
  # where the data is and how often to log and checkpoint, nothing that changes a result.
  from csa_jax import configs
  cfg = configs.load("synthetic", [("data.root", "/x")])
  want = demo.demo_config(root="/x")
  for group in ("model", "train"):
    assert cfg[group].to_dict() == want[group].to_dict(), group
  assert cfg.data.K == want.data.K and cfg.data.descriptors == want.data.descriptors
  tiny = demo.demo_config(root="/x", **demo.SIZES["tiny"][1])
  # The demo's tiny mode is configs/tiny.py's model and schedule, the one tiny.
  shipped = configs.load("tiny")
  assert (tiny.model.dim, tiny.data.K, tiny.train.epochs) == (16, 8, 2)
  for dotted in configs.TINY_KEYS:
    group, key = dotted.split(".")
    assert tiny[group][key] == shipped[group][key], dotted
  assert tiny.model.drop == want.model.drop  # the recipe stays the demo's

