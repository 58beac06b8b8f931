"""``csa-jax eval`` in-process on tiny generated files, checked against straightforward numpy."""

import json
import pathlib
import pickle
import re
import shutil

import jax
import numpy as np
import pytest

from csa_jax.cli import main as cli
from csa_jax.core.forward import init_params
from csa_jax.data import synthetic
from csa_jax.interop import state_dict as interop
from csa_jax.core.affinity import rerank_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.evaluation.revisited import revisited_map
from csa_jax.interop.export import save_export
from csa_jax.core.forward import rerank_scores

C, NQ, NDB = 16, 4, 60


def unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("eval")
  rng = np.random.default_rng(0)
  q = unit(rng.standard_normal((NQ, C)))
  db = unit(rng.standard_normal((NDB, C)))
  db[:20] = unit(np.repeat(q, 5, 0) + 0.9 * rng.standard_normal((20, C)))  # near each query
  gnd = [{"easy": list(range(5 * i, 5 * i + 2)), "hard": list(range(5 * i + 2, 5 * i + 4)) + [40],
          "junk": [5 * i + 4]} for i in range(NQ)]
  np.savez(d / "feats.npz", db=db, query=q)
  (d / "gnd_toy.json").write_text(json.dumps({"gnd": gnd}))
  np.save(d / "r1m.npy", unit(rng.standard_normal((100, C))))
  return d, q, db, gnd


def expected(q, db, gnd, top_QxK=None):
  """Percent mAP (E, M, H) from a full stable argsort in float64."""
  ranks = np.argsort(-(q.astype(np.float64) @ db.T.astype(np.float64)), axis=1, kind="stable")
  if top_QxK is not None:
    ranks = np.stack([np.concatenate([t, r[~np.isin(r, t)]]) for r, t in zip(ranks, top_QxK)])
  r = revisited_map(ranks, gnd)  # (Q, N): queries first
  return [100 * r[p]["map"] for p in ("easy", "medium", "hard")]


def run_eval(args, capsys):
  rc = cli.main(["eval"] + [str(a) for a in args])
  out, err = capsys.readouterr()
  return rc, out, err


def error_line(err):
  """The one error line, last on stderr (notes on what was read may come before it)."""
  lines = err.strip().splitlines()
  assert "Traceback" not in err and lines[-1].startswith("csa-jax eval: error: "), err
  assert sum("error" in line for line in lines) == 1, err
  return lines[-1]


def maps(path):
  js = json.loads(path.read_text())
  return js, {k: [js[k][p]["map"] for p in ("easy", "medium", "hard")]
              for k in ("first_round", "csa") if k in js}


def test_first_round(files, capsys):
  d, q, db, gnd = files
  rc, out, err = run_eval(["--features", d / "feats.npz", "--gnd", d / "gnd_toy.json",
                           "--out", d / "a.json"], capsys)
  assert rc == 0, err
  lines = out.splitlines()
  assert len(lines) == 2 and lines[0].startswith(">> toy: mAP E: ")
  assert re.fullmatch(r">> toy: mP@1/5/10 E: [\d./]+, M: [\d./]+, H: [\d./]+", lines[1])
  js, m = maps(d / "a.json")
  np.testing.assert_allclose(m["first_round"], expected(q, db, gnd), rtol=1e-9)
  assert js["db_images"] == NDB and js["distractors"] == 0 and js["search_dtype"] == "float32"
  assert f"M: {m['first_round'][1]:.2f}," in lines[0]  # the table is the JSON's numbers
  assert re.search(r"; search \d+\.\d\d s, evaluate \d+\.\d\d s$", err, re.M), err


def test_r1m_and_two_npy_files(files, capsys):
  d, q, db, gnd = files
  np.save(d / "db.npy", db.T)  # (C, n), as cnnimageretrieval stores it
  np.save(d / "q.npy", q)
  rc, out, err = run_eval(["--db", d / "db.npy", "--query", d / "q.npy", "--gnd",
                           d / "gnd_toy.json", "--r1m", d / "r1m.npy", "--out", d / "b.json"],
                          capsys)
  assert rc == 0, err
  assert out.startswith(">> toy+1m: mAP")
  js, m = maps(d / "b.json")
  full = np.concatenate([db, np.load(d / "r1m.npy")])
  np.testing.assert_allclose(m["first_round"], expected(q, full, gnd), rtol=1e-9)
  assert js["distractors"] == 100


def test_original_pickles(files, capsys):
  # docs/method.md section 6 layout: descriptors stored (C, n), gnd with imlist / qimlist.
  d, q, db, gnd = files
  (d / "feats.pkl").write_bytes(pickle.dumps({"db": db.T.copy(), "query": q.T.copy()}))
  (d / "gnd_toy.pkl").write_bytes(pickle.dumps(
      {"imlist": [f"im{i}" for i in range(NDB)], "qimlist": [f"q{i}" for i in range(NQ)],
       "gnd": [{k: np.asarray(v) for k, v in g.items()} for g in gnd]}))
  rc, out, err = run_eval(["--features", d / "feats.pkl", "--gnd", d / "gnd_toy.pkl",
                           "--out", d / "c.json"], capsys)
  assert rc == 0, err
  np.testing.assert_allclose(maps(d / "c.json")[1]["first_round"], expected(q, db, gnd),
                             rtol=1e-9)


def test_model_reranks_top_k(files, capsys):
  d, q, db, gnd = files
  cfg = ModelConfig(anchors=8, dim=16, depth=1, heads=2)
  rng = np.random.default_rng(1)  # random weights in the original layout: no Flax init
  sd = {k: rng.normal(0, 0.3, s).astype(np.float32)
        for k, s in interop._expected_shapes(cfg).items()}
  params = interop.params_from_torch_state_dict(sd, heads=cfg.heads)[0]
  save_export(d / "model.npz", params, cfg)
  k = 6
  rc, out, err = run_eval(["--features", d / "feats.npz", "--gnd", d / "gnd_toy.json",
                           "--model", d / "model.npz", "--K", k, "--out", d / "m.json"], capsys)
  assert rc == 0, err
  lines = out.splitlines()
  assert len(lines) == 4 and lines[2].startswith(f">> toy CSA(K={k}): mAP E: ")
  # Independently: per query, affinity of its top-K, new scores, stable re-order.
  first = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :cfg.anchors - 1]  # L-1 >= K
  new_top = []
  for i in range(NQ):
    aff = rerank_affinity(q[i:i + 1], db, first[i:i + 1], k, cfg.anchors)
    s = np.asarray(rerank_scores(params, aff, cfg))[0]
    new_top.append(first[i, :k][np.argsort(-s, kind="stable")])
  js, m = maps(d / "m.json")
  np.testing.assert_allclose(m["first_round"], expected(q, db, gnd), rtol=1e-9)
  np.testing.assert_allclose(m["csa"], expected(q, db, gnd, np.array(new_top)), rtol=1e-9)
  assert js["K"] == k and js["L"] == 8
  # L must be the model's.
  rc, _, err = run_eval(["--features", d / "feats.npz", "--gnd", d / "gnd_toy.json", "--model",
                         d / "model.npz", "--L", 9, "--out", d / "m2.json"], capsys)
  assert rc == 2 and error_line(err).startswith("csa-jax eval: error: command line: --L:")


@pytest.mark.parametrize("bad", ["gnd_range", "k_zero", "no_features", "r1m_width"])
def test_bad_input_is_one_line_exit_2(files, capsys, bad):
  d, q, db, gnd = files
  args = ["--features", d / "feats.npz", "--gnd", d / "gnd_toy.json", "--out", d / "x.json"]
  if bad == "gnd_range":
    broken = [dict(g) for g in gnd]
    broken[2] = dict(broken[2], junk=[NDB + 7])
    (d / "gnd_bad.json").write_text(json.dumps({"gnd": broken}))
    args[3], want = d / "gnd_bad.json", "gnd_bad.json"
  elif bad == "k_zero":
    args += ["--K", 0]
    want = "--K"
  elif bad == "no_features":
    args = args[2:]
    want = "--features"
  else:
    np.save(d / "r1m_bad.npy", unit(np.ones((30, C + 1))))
    args += ["--r1m", d / "r1m_bad.npy"]
    want = "r1m_bad.npy"
  rc, out, err = run_eval(args, capsys)
  assert rc == 2
  assert want in error_line(err) and out == ""
  assert not (d / "x.json").exists()


@pytest.mark.parametrize("bad", ["parent_is_file", "is_dir", "default_is_dir"])
def test_output_path_checked_before_model_and_data(files, capsys, tmp_path, monkeypatch, bad):
  d = files[0]
  (tmp_path / "afile").write_text("x")
  (tmp_path / "adir").mkdir()
  monkeypatch.chdir(tmp_path)  # where the default eval_<dataset>.json goes
  (tmp_path / "eval_toy.json").mkdir()
  # Neither the model nor the features exist: only the output path can be what fails.
  args = ["--features", tmp_path / "missing.npz", "--gnd", d / "gnd_toy.json", "--model",
          tmp_path / "missing_model.npz"]
  out, want = {"parent_is_file": (["--out", tmp_path / "afile" / "r.json"],
                                  "r.json: --out: expected a path whose parent is a directory"),
               "is_dir": (["--out", tmp_path / "adir"], "adir: --out: expected a file path"),
               "default_is_dir": ([], "eval_toy.json: --out: expected a file path")}[bad]
  rc, stdout, err = run_eval(args + out, capsys)
  assert rc == 2 and stdout == ""
  assert want in error_line(err)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "eval_toy.json"]


def test_two_files_are_cross_checked_with_the_gnd(files, capsys):
  d, q, db, gnd = files
  np.save(d / "db_short.npy", db[:30])  # gnd_toy.json has no imlist; its indices reach 40
  np.save(d / "q3.npy", q[:3])
  np.save(d / "db_full.npy", db)
  np.save(d / "q_full.npy", q)
  for dbf, qf, want in (("db_short.npy", "q_full.npy", "gnd_toy.json: gnd[0].hard: expected "
                                                       "indices in [0, 30)"),
                        ("db_full.npy", "q3.npy", "q3.npy: query: expected 4 descriptors")):
    rc, out, err = run_eval(["--db", d / dbf, "--query", d / qf, "--gnd", d / "gnd_toy.json",
                             "--out", d / "y.json"], capsys)
    assert rc == 2 and out == ""
    assert want in error_line(err)
    assert not (d / "y.json").exists()


def test_features_and_files_together_refused(files, capsys):
  d = files[0]
  rc, _, err = run_eval(["--features", d / "feats.npz", "--db", d / "feats.npz", "--query",
                         d / "feats.npz", "--gnd", d / "gnd_toy.json"], capsys)
  assert rc == 2 and "command line: --features: expected either" in error_line(err)


def test_failed_write_leaves_no_output_and_no_temporary(files, capsys, tmp_path, monkeypatch):
  from csa_jax.cli import eval as eval_cmd
  from csa_jax import fileio
  d = files[0]

  def full_disk(path, obj):
    with fileio.atomic_path(path) as tmp, open(tmp, "w") as f:
      f.write('{"partial": ')
      raise OSError(28, "No space left on device")

  monkeypatch.setattr(eval_cmd, "write_json", full_disk)
  rc, _, err = run_eval(["--features", d / "feats.npz", "--gnd", d / "gnd_toy.json", "--out",
                         tmp_path / "r.json"], capsys)
  assert rc == 2
  assert "r.json: --out: expected a writable file, found No space left on device" in \
      error_line(err)
  assert list(tmp_path.iterdir()) == []


# --- several datasets from a data root, the AP plot, provenance -------------------------------

SMALL = synthetic.SynthConfig(dim=16, parts=6, styles=3, train_landmarks=3, train_photos=4,
                              train_singles=10, val_landmarks=1, val_singles=2, test_landmarks=3,
                              test_photos=9, queries_per_landmark=2, test_minor=2,
                              test_singles=30)


@pytest.fixture(scope="module")
def root(tmp_path_factory, files):
  """A data root with two synthetic test sets (different seeds), R1M distractors and a model."""
  r = tmp_path_factory.mktemp("root")
  p = synthetic.write_benchmark(r / "data", SMALL)
  other = synthetic.paths(r / "other")
  synthetic.write_benchmark(r / "other", SMALL.replace(seed=1))
  for src, dst in ((other["test_features"], f"test/synthb/{synthetic.FEATURES}.npz"),
                   (other["gnd"], "annotations/synthb/gnd_synthb.json")):
    (r / "data" / dst).parent.mkdir(parents=True)
    shutil.copy(src, r / "data" / dst)
  (r / "data" / "test" / "r1m").mkdir()
  np.save(r / "data" / "test" / "r1m" / f"{synthetic.FEATURES}.npy",
          unit(np.random.default_rng(3).standard_normal((50, SMALL.dim))))
  cfg = ModelConfig(anchors=8, dim=16, depth=1, heads=2)
  save_export(r / "model.npz", init_params(cfg, jax.random.key(0)), cfg)
  return r, p


def test_data_root_equals_single_file_evals(root, capsys):
  r = root[0]
  data, feats = r / "data", synthetic.FEATURES
  r1m = data / "test" / "r1m" / f"{feats}.npy"
  rc, out, err = run_eval(["--data", data, "--features", feats, "--datasets",
                           f"{synthetic.DATASET},synthb", "--r1m", "--model", r / "model.npz",
                           "--K", 8, "--out", r / "all.json"], capsys)
  assert rc == 0, err
  tables = [line.split(":")[0] for line in out.splitlines()]
  assert tables == [f">> {ds}+1m{csa}" for ds in (synthetic.DATASET, "synthb")
                    for csa in ("", "", " CSA(K=8)", " CSA(K=8)")]
  js = json.loads((r / "all.json").read_text())
  assert js["features"] == feats and js["r1m"] == str(r1m) and "run" in js
  assert js["run"]["command"].startswith("csa-jax eval --data ")
  assert list(js["datasets"]) == [f"{synthetic.DATASET}+1m", "synthb+1m"]
  assert (r / "all.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  for ds in (synthetic.DATASET, "synthb"):
    gnd = next(data.glob(f"annotations/{ds}/gnd_{ds}.json"))
    rc, _, err = run_eval(["--features", data / "test" / ds / f"{feats}.npz", "--gnd", gnd,
                           "--r1m", r1m, "--model", r / "model.npz", "--K", 8, "--out",
                           r / f"{ds}.json"], capsys)
    assert rc == 0, err
    single = json.loads((r / f"{ds}.json").read_text())
    both = js["datasets"][f"{ds}+1m"]
    assert both["distractors"] == single["distractors"] == 50
    for k in ("first_round", "csa", "queries", "db_images", "K", "L", "gnd"):
      assert both[k] == single[k], k
  assert js["datasets"][f"{synthetic.DATASET}+1m"]["csa"] != js["datasets"]["synthb+1m"]["csa"]


def test_data_root_without_model_or_r1m(root, capsys, tmp_path, monkeypatch):
  r = root[0]
  monkeypatch.chdir(tmp_path)
  rc, out, err = run_eval(["--data", r / "data", "--features", synthetic.FEATURES, "--datasets",
                           "synthb"], capsys)  # default --out: eval_<features>.json in the cwd
  assert rc == 0, err
  assert len(out.splitlines()) == 2
  js = json.loads((pathlib.Path(f"eval_{synthetic.FEATURES}.json")).read_text())
  assert list(js["datasets"]) == ["synthb"] and js["r1m"] is None and js["model"] is None
  assert pathlib.Path(f"eval_{synthetic.FEATURES}.png").exists()


def test_data_root_without_datasets_evaluates_every_test_set(root, capsys):
  r = root[0]
  args = ["--data", r / "data", "--features", synthetic.FEATURES]
  lone = r / "data" / "test" / "nognd"  # descriptors without ground truth: named, not evaluated
  lone.mkdir()
  shutil.copy(r / "data" / "test" / "synthb" / f"{synthetic.FEATURES}.npz", lone)
  try:
    rc, out, err = run_eval(args + ["--out", r / "every.json"], capsys)
  finally:
    shutil.rmtree(lone)
  assert rc == 0, err
  assert f"test sets found: {synthetic.DATASET}, synthb" in err
  assert (f"test/nognd has {synthetic.FEATURES} descriptors but no gnd_nognd.* "
          "(annotations/nognd/ or test/nognd/): not evaluated") in err
  rc, named_out, err = run_eval(args + ["--datasets", f"{synthetic.DATASET},synthb", "--out",
                                        r / "named.json"], capsys)
  assert rc == 0, err
  every, named = (json.loads((r / f).read_text()) for f in ("every.json", "named.json"))
  assert list(every["datasets"]) == [synthetic.DATASET, "synthb"]
  for ds in every["datasets"]:
    assert every["datasets"][ds]["first_round"] == named["datasets"][ds]["first_round"]
  assert out == named_out


@pytest.mark.parametrize("bad", ["with_gnd", "features_file", "datasets_without_data",
                                 "bare_r1m_without_data", "missing_dataset", "no_features",
                                 "no_test_sets", "twice"])
def test_data_root_flag_errors(root, files, capsys, bad):
  r = root[0]
  d = files[0]
  base = ["--data", r / "data", "--features", synthetic.FEATURES, "--datasets",
          f"{synthetic.DATASET},synthb", "--out", r / "x.json"]
  args, want = {
      "with_gnd": (base + ["--gnd", d / "gnd_toy.json"], "command line: --data: expected"),
      "features_file": (["--data", r / "data", "--features", d / "feats.npz", "--datasets",
                         "synthb"], "command line: --features: expected a name under --data"),
      "datasets_without_data": (["--features", d / "feats.npz", "--gnd", d / "gnd_toy.json",
                                 "--datasets", "a,b"], "--datasets: expected --data ROOT"),
      "bare_r1m_without_data": (["--features", d / "feats.npz", "--gnd", d / "gnd_toy.json",
                                 "--r1m"], "--r1m: expected a file path"),
      "missing_dataset": (base[:5] + ["synthb,nope"] + base[6:],
                          f"--datasets: expected test sets with {synthetic.FEATURES} descriptors "
                          f"and a gnd file (this root has: {synthetic.DATASET}, synthb), found "
                          f"'nope': no test/nope/{synthetic.FEATURES}.*"),
      "no_features": (base[:2] + base[4:], "--data: expected --features NAME"),
      "no_test_sets": (["--data", r / "data", "--features", "other"],
                       "--features: expected test sets with other descriptors"),
      "twice": (base[:5] + ["synthb,synthb"] + base[6:], "--datasets: expected distinct"),
  }[bad]
  rc, out, err = run_eval(args, capsys)
  assert rc == 2 and out == "", err  # a missing dataset fails before any other is evaluated
  assert want in error_line(err)
  assert not (r / "x.json").exists()


def test_plot_failure_is_a_warning(files, capsys, tmp_path, monkeypatch):
  from csa_jax.evaluation import plots
  d = files[0]

  def broken(path, results):
    raise RuntimeError("no fonts")

  monkeypatch.setattr(plots, "save_ap_plot", broken)
  rc, _, err = run_eval(["--features", d / "feats.npz", "--gnd", d / "gnd_toy.json", "--out",
                         tmp_path / "r.json"], capsys)
  assert rc == 0 and "warning: no per-query AP plot (RuntimeError: no fonts)" in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
  js = json.loads((tmp_path / "r.json").read_text())
  assert js["run"]["versions"]["jax"] == jax.__version__ and js["run"]["seed"] is None
