"""The TFDS copy of a data root (optional extra "tfds"): packed from the real layout, read back
through ``tfds.data_source`` without TensorFlow, it gives exactly what the file readers give, and
a model trained and evaluated from it is the same model with the same numbers."""

import math
import sys

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from csa_jax.data import (  # noqa: E402
  annotations,
  descriptors,
  ground_truth,
  large_descriptors,
  layout,
  synthetic,
  tfds_builder,
  tfds_reader,
)
from csa_jax.errors import InputError  # noqa: E402
from csa_jax.evaluation.evaluate import evaluate, mean_ap_percent  # noqa: E402
from csa_jax.experiments import demo  # noqa: E402
from csa_jax.train import train_set as pipeline  # noqa: E402

FEATURE, DS = synthetic.FEATURES, synthetic.DATASET
BENCH, OVERRIDES, TEST_K = demo.SIZES["tiny"]
TF_BEFORE = "tensorflow" in sys.modules


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
  root = tmp_path_factory.mktemp("root")
  paths = synthetic.write_benchmark(root, BENCH)
  out = tmp_path_factory.mktemp("tfds")
  where = tfds_builder.build_tfds(root, FEATURE, out)
  return str(root), paths, str(out), where


def _same(a, b, path="") -> None:
  """Exact equality of nested dicts / lists / arrays, dtypes included (NaN equals NaN)."""
  assert type(a) is type(b), path
  if isinstance(a, dict):
    assert a.keys() == b.keys(), path
    for k in a:
      _same(a[k], b[k], f"{path}.{k}")
  elif isinstance(a, (list, tuple)):
    assert len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      _same(x, y, f"{path}[{i}]")
  elif isinstance(a, np.ndarray):
    assert a.dtype == b.dtype and a.shape == b.shape, path
    np.testing.assert_array_equal(a, b, err_msg=path)
  else:
    assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), path


def test_layout_and_splits(packed):
  root, _, out, where = packed
  assert layout.feature_names(root) == [FEATURE]
  assert tfds_builder.find_test_sets(root, FEATURE) == [DS]
  assert where == tfds_builder.dataset_dir(out, FEATURE)
  sources = tfds_reader.open_tfds(out, FEATURE)
  assert sorted(sources) == sorted(["train", "val", f"{DS}_db", f"{DS}_query"])
  info = sources["train"].dataset_info
  assert info.file_format.value == "array_record" and str(info.version) == "1.0.0"
  assert info.config_name == FEATURE and info.disable_shuffling
  assert tfds_reader.tfds_test_sets(out, FEATURE) == [DS]


def test_readers_give_what_the_file_readers_give(packed):
  _, paths, out, _ = packed
  ann = annotations.load_annotations(paths["annotations"])
  _same(tfds_reader.load_annotations_from_tfds(out, FEATURE), ann)
  for split in ("train", "val"):
    want = descriptors.load_descriptors(paths["train_features"], split,
                                    n=len(ann[split]["cluster"]))
    feats, clusters = tfds_reader.load_train_from_tfds(out, FEATURE, split)
    _same((feats, clusters), (want, ann[split]["cluster"]))
  _same(tfds_reader.load_test_set_from_tfds(out, FEATURE, DS),
        ground_truth.load_test_set(paths["test_features"], paths["gnd"]))


def _train_and_eval(root, ts, q, db, gnd, workdir):
  from csa_jax.train.loop import train  # noqa: PLC0415  (heavy)
  config = demo.demo_config(root, **OVERRIDES)
  result = train(config, workdir, train_set=ts, progress=False)
  res = evaluate(q, db, gnd, model=(result.params, result.model_cfg),
                 K=min(TEST_K, len(db)), batch_size=demo.RERANK_BATCH)
  return result.params, {k: res[k] for k in ("first_round", "csa")}


@pytest.mark.slow
def test_training_and_evaluation_from_either_copy_are_identical(packed, tmp_path):
  root, paths, out, _ = packed
  K, L = OVERRIDES["K"], OVERRIDES["anchors"]
  ts_files = pipeline.load_train_set([paths["train_features"]], paths["annotations"], K=K, L=L)
  ts_tfds = pipeline.load_train_set_from_tfds(out, [FEATURE], K=K, L=L)
  _same(vars(ts_tfds), vars(ts_files))
  files = _train_and_eval(root, ts_files,
                          *ground_truth.load_test_set(paths["test_features"], paths["gnd"]),
                          str(tmp_path / "files"))
  packed_ = _train_and_eval(root, ts_tfds, *tfds_reader.load_test_set_from_tfds(out, FEATURE, DS),
                            str(tmp_path / "tfds"))
  leaves_f, tree_f = jax.tree_util.tree_flatten(files[0])
  leaves_t, tree_t = jax.tree_util.tree_flatten(packed_[0])
  assert tree_f == tree_t
  for a, b in zip(leaves_f, leaves_t):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  _same(packed_[1], files[1])
  for k in ("first_round", "csa"):
    assert mean_ap_percent(packed_[1][k]) == mean_ap_percent(files[1][k])
  if not TF_BEFORE:  # nothing here needed TensorFlow, installed or not
    assert "tensorflow" not in sys.modules


def test_the_original_pickle_layout(tmp_path):
  """Pickles, (C, n) descriptors and the gnd beside the features (cnnimageretrieval-pytorch)."""
  import pickle  # noqa: PLC0415
  data = synthetic.generate(BENCH)
  root = tmp_path / "root"
  files = {"annotations/retrieval-SfM-120k.pkl": data["annotations"],
           f"train/{FEATURE}.pkl": {k: v.T.astype(np.float64) for k, v in
                                    data["train_feats"].items()},
           f"test/{DS}/{FEATURE}.pkl": {k: v.T for k, v in data["test_feats"].items()},
           f"test/{DS}/gnd_{DS}.pkl": data["gnd"]}
  for rel, obj in files.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(pickle.dumps(obj))
  assert tfds_builder.find_test_sets(str(root), FEATURE) == [DS]
  tfds_builder.build_tfds(root, FEATURE, tmp_path / "out")
  ann = annotations.load_annotations(root / "annotations/retrieval-SfM-120k.pkl")
  _same(tfds_reader.load_annotations_from_tfds(tmp_path / "out", FEATURE), ann)
  _same(tfds_reader.load_train_from_tfds(tmp_path / "out", FEATURE),
        (descriptors.load_descriptors(root / f"train/{FEATURE}.pkl", "train",
                                  n=len(ann["train"]["cluster"])), ann["train"]["cluster"]))
  _same(tfds_reader.load_test_set_from_tfds(tmp_path / "out", FEATURE, DS),
        ground_truth.load_test_set(root / f"test/{DS}/{FEATURE}.pkl",
                                   root / f"test/{DS}/gnd_{DS}.pkl"))


def test_r1m_split(tmp_path):
  root = tmp_path / "root"
  synthetic.write_benchmark(root, BENCH)
  r1m = np.random.default_rng(0).normal(size=(50, BENCH.dim)).astype(np.float32)
  (root / "test" / "r1m").mkdir(parents=True)
  np.save(root / "test" / "r1m" / f"{FEATURE}.npy", r1m)
  tfds_builder.build_tfds(root, FEATURE, tmp_path / "out", datasets=(), r1m=True)
  got = tfds_reader.load_r1m_from_tfds(tmp_path / "out", FEATURE, dim=BENCH.dim)
  _same(got, np.asarray(large_descriptors.load_r1m(root / "test" / "r1m" / f"{FEATURE}.npy",
                                         dim=BENCH.dim)))
  assert tfds_reader.tfds_test_sets(tmp_path / "out", FEATURE) == []


def test_build_refuses_an_existing_dataset_and_a_missing_test_set(packed, tmp_path):
  root, _, out, _ = packed
  with pytest.raises(InputError, match="remove it to rebuild"):
    tfds_builder.build_tfds(root, FEATURE, out)
  with pytest.raises(InputError, match=r"gnd_roxford5k\.\*: file: expected one of"):
    tfds_builder.build_tfds(root, FEATURE, tmp_path, datasets=("roxford5k",))
  assert not (tmp_path / tfds_builder.NAME / FEATURE).exists()


def _crafted(tmp_path, splits, dim=4):
  """A dataset written with the builder's schema from ``splits`` as given (no validation)."""
  b = tfds_builder._builder(tfds, "bad", str(tmp_path), dim, splits)
  b.download_and_prepare(download_dir=str(tmp_path / "dl"))
  return str(tmp_path)


def _ex(i, row, **kw):
  return tfds_builder._example(i, np.asarray(row, np.float32), **kw)


@pytest.mark.parametrize("case, message", [
    ("nan", r"train\.descriptor: expected finite values"),
    ("dup", r"train\.index: expected each of 0\.\.2 once, found 1 twice"),
    ("cluster", r"train\.cluster: expected non-negative indices"),
    ("gnd", r"gnd\[0\]\.easy: expected indices in \[0, 3\)"),
])
def test_bad_content_is_one_input_error_line(tmp_path, case, message):
  e = np.eye(4, dtype=np.float32)
  train = [_ex(i, e[i], cluster=i) for i in range(3)]
  if case == "nan":
    train[1] = _ex(1, [np.nan, 0, 0, 0], cluster=1)
  if case == "dup":
    train[2] = _ex(1, e[2], cluster=2)
  if case == "cluster":
    train[0] = _ex(0, e[0], cluster=-1)
  splits = {"train": list(enumerate(train)), "x_db": [(i, _ex(i, e[i])) for i in range(3)],
            "x_query": [(0, _ex(0, e[3], easy=[0, 3]))]}
  data_dir = _crafted(tmp_path, splits)
  with pytest.raises(InputError, match=message) as err:
    if case == "gnd":
      tfds_reader.load_test_set_from_tfds(data_dir, "bad", "x")
    else:
      tfds_reader.load_train_from_tfds(data_dir, "bad")
  assert "\n" not in str(err.value)


def test_missing_dataset_split_and_extra(packed, tmp_path, monkeypatch):
  _, _, out, _ = packed
  with pytest.raises(InputError, match="no dataset_info.json"):
    tfds_reader.load_train_from_tfds(tmp_path, FEATURE)
  with pytest.raises(InputError, match=r"test set 'roxford5k'.*found test sets \['synth5k'\]"):
    tfds_reader.load_test_set_from_tfds(out, FEATURE, "roxford5k")
  with pytest.raises(InputError, match=r"r1m: expected a split of that name"):
    tfds_reader.load_r1m_from_tfds(out, FEATURE)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(InputError, match=r"pip install 'csa_jax\[tfds\]'"):
    tfds_reader.load_train_from_tfds(out, FEATURE)


def test_cli_convert_train_and_eval_from_the_tfds_copy(packed, tmp_path, capsys):
  """convert-data --to tfds, data.source=tfds and eval --tfds: the files' training set and
  numbers."""
  import json  # noqa: PLC0415

  from csa_jax import configs  # noqa: PLC0415
  from csa_jax.cli import main as cli  # noqa: PLC0415
  from csa_jax.train import checks  # noqa: PLC0415
  from csa_jax.train.train_set import load_train_data  # noqa: PLC0415
  root, _, _, _ = packed
  out = tmp_path / "tfds"
  assert cli.main(["convert-data", "--root", root, "--to", "tfds", "--out-root", str(out)]) == 0
  assert f"wrote {tfds_builder.dataset_dir(out, FEATURE)}" in capsys.readouterr().out
  assert cli.main(["convert-data", "--root", root, "--to", "tfds", "--out-root", str(out)]) == 2
  assert "remove it to rebuild" in capsys.readouterr().err
  assert cli.main(["convert-data", "--root", root, "--r1m"]) == 2
  assert "--r1m: expected --to tfds" in capsys.readouterr().err

  common = [("data.cache_dir", str(tmp_path / "nb")), ("data.K", "16"), ("model.anchors", "16")]
  from_files = configs.load("synthetic", [("data.root", root), *common])
  from_tfds = configs.load("synthetic", [("data.root", str(out)), ("data.source", "tfds"),
                                         *common])
  checks.validate_config(from_tfds)
  _same(vars(load_train_data(from_tfds, str(tmp_path))),
        vars(load_train_data(from_files, str(tmp_path))))
  bad = configs.load("synthetic", [("data.root", str(tmp_path / "none")),
                                   ("data.source", "tfds")])
  with pytest.raises(InputError, match="data.root: expected the TFDS data_dir"):
    checks.validate_config(bad)

  res = {}
  capsys.readouterr()
  for flag, where, named in (("--data", root, ["--datasets", DS]), ("--tfds", str(out), [])):
    path = tmp_path / f"eval{flag}.json"  # the TFDS copy without --datasets: every test set
    assert cli.main(["eval", flag, where, "--features", FEATURE, *named, "--out",
                     str(path)]) == 0
    assert ("test sets found" in capsys.readouterr().err) == (not named)
    assert list(json.loads(path.read_text())["datasets"]) == [DS]
    res[flag] = json.loads(path.read_text())["datasets"][DS]
    for k in ("seconds", "features", "gnd"):
      res[flag].pop(k)
  assert res["--data"] == res["--tfds"]
  assert cli.main(["eval", "--tfds", str(out), "--features", FEATURE, "--datasets",
                   "roxford5k", "--out", str(tmp_path / "x.json")]) == 2
  assert "test set 'roxford5k' in the TFDS copy" in capsys.readouterr().err
