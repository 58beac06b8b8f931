"""Every ``csa-jax experiment`` end to end in its tiny form, and the pieces they are built from.

The studies share one output directory, so the default tiny model is trained once (by the
first study that needs it) and reused, as it is for users; each test also passes on its own.
"""

import json
import os

import numpy as np
import pytest

from csa_jax.cli import experiment as experiments
from csa_jax.cli import main as cli
from csa_jax.data import synthetic
from csa_jax.errors import InputError
from csa_jax.evaluation.revisited import PROTOCOLS, percent, revisited_map
from csa_jax.experiments import baseline_study as eb
from csa_jax.experiments import datasets
from csa_jax.experiments import demo
from csa_jax.experiments import dispatch
from csa_jax.experiments import heldout
from csa_jax.experiments import studies as st


@pytest.fixture(scope="module")
def out(tmp_path_factory):
  return str(tmp_path_factory.mktemp("experiments"))


def _run(out, name, *args):
  assert experiments.main([name, "--size", "tiny", "--out", out, "--no-progress", *args]) == 0
  with open(os.path.join(out, f"{name}.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(out, f"{name}.json")) as f:
    res = json.load(f)
  assert res["experiment"] == name and res["size"] == "tiny" and res["seconds"] >= 0
  return res


def _check_map(m):
  assert set(m) == set(PROTOCOLS)
  for p in PROTOCOLS:
    assert np.isfinite(m[p]) and 0.0 <= m[p] <= 100.0, m


def _check_results(res):
  """{dataset: {'first_round': mAP, 'csa': mAP}} on the synthetic test set."""
  assert list(res) == [synthetic.DATASET]
  for r in res.values():
    _check_map(r["first_round"])
    _check_map(r["csa"])


def _tiny_first_round(out):
  """mAP of a plain numpy argsort of the tiny test set: an independent first round, rounded
  as every table is (``percent``)."""
  data = np.load(os.path.join(out, "data", "test", synthetic.DATASET, f"{synthetic.FEATURES}.npz"))
  with open(os.path.join(out, "data", "annotations", synthetic.DATASET,
                         f"gnd_{synthetic.DATASET}.json")) as f:
    gnd = json.load(f)["gnd"]
  ranks_QxN = np.argsort(-(data["query"] @ data["db"].T), axis=1, kind="stable")
  r = revisited_map(ranks_QxN, gnd)
  return {p: percent(r[p]["map"]) for p in PROTOCOLS}


def test_baselines_experiment(out):
  res = _run(out, "baselines")
  rows = res["table"]
  assert [r["method"] for r in rows] == ["first round", "AQE", "alpha-QE", "alpha-DBA",
                                         "alpha-DBA + alpha-QE", "CSA", "alpha-DBA + CSA"]
  for r in rows:
    _check_map(r["map"][synthetic.DATASET])
  first = rows[0]["map"][synthetic.DATASET]
  want = _tiny_first_round(out)
  for p in PROTOCOLS:
    assert first[p] == pytest.approx(want[p], abs=1e-9)
  # Each classic method's row is its best grid point by Medium mAP.
  for name, key in (("AQE", "aqe"), ("alpha-QE", "alpha_qe"), ("alpha-DBA", "alpha_dba")):
    row = next(r for r in rows if r["method"] == name)
    grid = res["grid"][key]
    assert row["map"] == grid[str(row["params"]["k"])]
    assert row["map"][synthetic.DATASET]["medium"] == max(
        g[synthetic.DATASET]["medium"] for g in grid.values())
  assert "| CSA (K=16, L=8) |" in eb.markdown_table(rows, [synthetic.DATASET])


@pytest.mark.slow
def test_kl_sweep(out):
  # L=8 is the default model's: one more model would only cost time.
  res = _run(out, "kl-sweep", "--l-values", "8")
  assert [p["K"] for p in res["K"]] == list(dispatch.K_VALUES_TINY)
  assert [p["L"] for p in res["L"]] == [8]
  for p in res["K"] + res["L"]:
    _check_results(p["results"])
  # The first round does not depend on the re-ranker; L=8 is the default model itself.
  firsts = {json.dumps(p["results"][synthetic.DATASET]["first_round"])
            for p in res["K"] + res["L"]}
  assert len(firsts) == 1
  assert res["L"][0]["run"] == res["K"][0]["run"]


@pytest.mark.slow
def test_cross_feature(out):
  res = _run(out, "cross-feature", "--features", "synth-gem,synth-proj", "--train-on",
             "synth-gem")
  assert res["test_on"] == ["synth-gem", "synth-proj"] and res["train_on"] == ["synth-gem"]
  row = res["matrix"]["synth-gem"]
  for f in res["test_on"]:
    _check_results(row[f])
  # Different descriptors give different first rounds; synth-gem's is the plain argsort's.
  assert row["synth-gem"] != row["synth-proj"]
  got = row["synth-gem"][synthetic.DATASET]["first_round"]
  want = _tiny_first_round(out)
  assert all(got[p] == pytest.approx(want[p], abs=1e-9) for p in PROTOCOLS)


@pytest.mark.slow
def test_seeds(out):
  # One seed (the default model, already trained) keeps the test fast; the statistics over
  # several are checked below on numbers.
  res = _run(out, "seeds", "--seeds", "1")
  (pt,) = res["seeds"]
  assert pt["seed"] == 0
  _check_results(pt["results"])
  s = res["summary"][synthetic.DATASET]["csa"]["hard"]
  assert s == {"mean": pytest.approx(pt["results"][synthetic.DATASET]["csa"]["hard"], abs=1e-3),
               "std": 0.0}


def test_mean_and_sample_std():
  assert st._mean_std([50.0, 52.0, 57.0]) == {"mean": pytest.approx(53.0),
                                               "std": pytest.approx(np.std([50, 52, 57],
                                                                           ddof=1), abs=1e-4)}


@pytest.mark.slow
def test_ablation(out):
  res = _run(out, "ablation", "--axes", "depth")
  axis = res["axes"]["depth"]
  assert axis["key"] == "model.depth" and axis["base"] == 1
  assert [p["value"] for p in axis["points"]] == [1, 2]
  for p in axis["points"]:
    _check_results(p["results"])
  with open(os.path.join(axis["points"][1]["run"], "config.json")) as f:
    assert json.load(f)["model"]["depth"] == 2


@pytest.mark.slow
def test_heldout_val(out):
  res = _run(out, "heldout-val")
  with open(os.path.join(out, "data", "annotations", "retrieval-SfM-120k.json")) as f:
    clusters = np.asarray(json.load(f)["train"]["cluster"])
  assert res["train_images"] + res["heldout_images"] == len(clusters)
  assert 0.1 < res["heldout_images"] / len(clusters) < 0.3  # --holdout 0.2 of whole clusters
  assert [p["epoch"] for p in res["epochs"]] == [1, 2]
  for p in res["epochs"]:
    for v in p["val"].values():
      assert np.isfinite(v) and 0 <= v <= 100
    _check_results(p["results"])
  assert res["selected_by_val"]["epoch"] in (1, 2)


def test_holdout_split_keeps_clusters_whole():
  clusters = np.repeat(np.arange(10), [5, 5, 5, 5, 5, 1, 1, 1, 1, 1])
  tr, ho = heldout.holdout_split(clusters, 0.4, seed=3)
  assert sorted(np.concatenate([tr, ho]).tolist()) == list(range(len(clusters)))
  assert not set(clusters[tr]) & set(clusters[ho])
  assert len(set(clusters[ho]) & set(range(5))) == 2  # 40% of the landmarks ...
  assert len(set(clusters[ho]) & set(range(5, 10))) == 2  # ... and of the singletons


def test_heldout_test_set_ground_truth():
  clusters = np.array([7, 7, 3, 7, 9])
  feats = np.eye(5, dtype=np.float32)
  ts = heldout.heldout_test_set(feats, clusters, max_queries=10)
  assert len(ts.gnd) == 3  # the singletons 3 and 9 have no positives: not queries
  for q, g in zip(ts.q_QxC, ts.gnd):
    i = int(np.argmax(q))
    assert g["junk"].tolist() == [i]
    assert sorted(g["easy"].tolist()) == [j for j in (0, 1, 3) if j != i]


def test_synthetic_backbones_are_other_descriptors_of_the_same_images(tmp_path):
  study_data = datasets.write_synthetic(str(tmp_path), demo.SIZES["tiny"][0])
  assert isinstance(study_data, datasets.StudyData)
  assert study_data.features == list(datasets.SYNTH_BACKBONES)
  base = study_data.test_set("synth-gem", synthetic.DATASET)
  sims = [base.db_NxC @ base.db_NxC.T]
  for f in study_data.features[1:]:
    ts = study_data.test_set(f, synthetic.DATASET)
    assert ts.db_NxC.shape[0] == base.db_NxC.shape[0] and ts.gnd is not base.gnd
    np.testing.assert_allclose(np.linalg.norm(ts.db_NxC, axis=1), 1, atol=1e-5)
    assert study_data.train_feats(f).shape[0] == len(study_data.clusters())
    sims.append(ts.db_NxC @ ts.db_NxC.T)
  iu = np.triu_indices(len(sims[0]), 1)
  for s in sims[1:]:
    r = np.corrcoef(sims[0][iu], s[iu])[0, 1]
    assert 0.5 < r < 0.999  # related (same images), not identical (another backbone)


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
  with pytest.raises(InputError, match="--axes"):
    experiments.main(["ablation", "--size", "tiny", "--out", str(tmp_path), "--axes", "width"])
  with pytest.raises(InputError, match="--values: expected a comma-separated list of int"):
    experiments.main(["ablation", "--size", "tiny", "--out", str(tmp_path), "--axes", "depth",
                      "--values", "1,2.5"])
  with pytest.raises(InputError, match="--features"):
    experiments.main(["baselines", "--data", str(tmp_path)])
  assert cli.main(["experiment", "cross-feature", "--size", "tiny", "--out", str(tmp_path),
                   "--features", "synth-gem,resnet"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert "resnet" in err[-1] and "Traceback" not in "".join(err)


def test_size_tiny_is_the_demos_tiny_benchmark_and_configs_tiny(tmp_path):
  from csa_jax import configs  # noqa: PLC0415
  from csa_jax.experiments import context  # noqa: PLC0415
  ctx = context.make_context("ablation", str(tmp_path), size="tiny", progress=False)
  assert ctx.K == demo.SIZES["tiny"][2]
  assert ctx.config.model.drop == 0.0  # the recipe stays the base's (the demo's)
  shipped = configs.load("tiny")
  for dotted, value in configs.tiny_overrides().items():
    group, key = dotted.split(".")
    assert ctx.config[group][key] == value == shipped[group][key], dotted
  want = synthetic.generate(demo.SIZES["tiny"][0])["annotations"]["train"]["cluster"]
  np.testing.assert_array_equal(ctx.data.clusters(), want)  # the data is the tiny benchmark
