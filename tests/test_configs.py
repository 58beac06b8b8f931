"""Shipped configs (by name and by path), typed overrides, and one-line errors for unknown keys
and wrong types."""

import copy
import pathlib
import pickle

import pytest

from csa_jax.cli import main as cli
from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

from csa_jax import configs
from csa_jax.errors import InputError

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


def _cfg():
  c = ConfigDict()
  c.model = dict(dim=16, dtype="float32", qkv_bias=True, drop=0.1)
  c.data = dict(root=placeholder(str), descriptors=("a.pkl",), sizes=(1, 2), anything=None)
  c.train = dict(base_lr=0.025, epochs=100, opt=dict(momentum=0.9))
  return c


@pytest.mark.parametrize("name", ["rsfm120k", "rsfm120k_aug", "synthetic", "tiny"])
def test_every_shipped_config_loads_and_builds_a_model_config(name):
  from csa_jax.train.loop import model_config
  c = configs.load(str(CONFIGS / f"{name}.py"))
  assert c.is_locked
  assert configs.load(name).to_dict() == c.to_dict()  # by name = by path
  mc = model_config(c)
  assert mc.anchors == c.model.anchors and c.data.K >= 1
  for group in ("model", "data", "train", "checkpoint", "log", "eval"):
    assert group in c


def test_paper_configs_hold_the_recipe_the_original_scripts_ran():
  c = configs.load(str(CONFIGS / "rsfm120k.py"))
  t = c.train
  # docs/method.md section 5: lr scaled by the per-GPU batch (64 of 256), clipping off, wd 1e-6.
  assert (t.base_lr, t.warmup_lr, t.final_lr) == (0.025, 0.00025, 0.0)
  assert (t.global_batch, t.epochs, t.warmup_epochs) == (256, 100, 20)
  assert (t.momentum, t.weight_decay, t.clip_norm, t.alpha) == (0.9, 1e-6, 0.0, 0.2)
  assert (c.model.dim, c.model.depth, c.model.heads, c.model.anchors, c.data.K) == (
      768, 2, 12, 512, 512)
  aug = configs.load(str(CONFIGS / "rsfm120k_aug.py"))
  assert len(aug.data.descriptors) == 3 and aug.train.to_dict() == t.to_dict()


def test_overrides_parse_to_the_leaf_type():
  c = _cfg()
  for key, text in [("model.dim", "32"), ("model.dtype", "bfloat16"), ("model.qkv_bias", "false"),
                    ("model.drop", "0"), ("data.root", "/x"), ("data.descriptors", "b.pkl,c.pkl"),
                    ("data.sizes", "[3, 4]"), ("train.opt.momentum", "0.5"),
                    ("data.anything", "[1, 'a']")]:
    configs.set_override(c, key, text)
  assert c.model.dim == 32 and type(c.model.dim) is int
  assert c.model.dtype == "bfloat16" and c.model.qkv_bias is False
  assert c.model.drop == 0.0 and type(c.model.drop) is float
  assert c.data.root == "/x" and c.data.descriptors == ("b.pkl", "c.pkl")
  assert c.data.sizes == (3, 4) and c.train.opt.momentum == 0.5
  assert c.data.anything == [1, "a"]
  configs.set_override(c, "data.root", "None")  # a placeholder may go back to None
  assert c.data.root is None


@pytest.mark.parametrize("key,text,needle", [
    ("model.dims", "3", "config.model.dims: expected a key of config.model"),
    ("nope.x", "3", "config.nope.x: expected a key of the config"),
    ("model.dim.x", "3", "config.model.dim.x"),
    ("model.dim", "3.5", "config.model.dim: expected int, found '3.5'"),
    ("train.base_lr", "fast", "config.train.base_lr: expected float, found 'fast'"),
    ("model.qkv_bias", "maybe", "config.model.qkv_bias: expected bool"),
    ("data.sizes", "1,x", "config.data.sizes: expected int"),
    ("model", "3", "config.model: expected a leaf value, found a group"),
    ("model.dim", "None", "config.model.dim: expected int, found 'None'"),
])
def test_unknown_keys_and_wrong_types_are_one_line_input_errors(key, text, needle):
  with pytest.raises(InputError) as e:
    configs.set_override(_cfg(), key, text)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_locked_configs_refuse_new_keys_and_copies_keep_types():
  c = _cfg()
  c.lock()
  with pytest.raises(AttributeError):
    c.model.dimension = 3
  d = copy.deepcopy(c)
  assert d == c and pickle.loads(pickle.dumps(c)) == c
  configs.set_override(d, "data.root", "/y")  # the placeholder's type survives the copy
  assert d.data.root == "/y" and c.data.root is None
  with pytest.raises(InputError):
    configs.set_override(d, "model.dim", "x")


def test_as_plain_is_what_json_stores():
  plain = configs.as_plain(_cfg())
  assert plain["data"]["descriptors"] == ["a.pkl"] and plain["data"]["root"] is None


def test_unknown_config_names_list_the_shipped_ones():
  with pytest.raises(InputError, match="tiny"):
    configs.resolve("no_such_config")
  assert {"rsfm120k", "rsfm120k_aug", "synthetic", "tiny"} <= set(configs.names())


def test_split_config_flags_accepts_both_spellings():
  path, ov, rest = configs.split_flags(
      ["--config", "c.py", "--config.a.b=1", "--workdir", "w", "--config.c", "x=y", "--resume"])
  assert path == "c.py" and ov == [("a.b", "1"), ("c", "x=y")]
  assert rest == ["--workdir", "w", "--resume"]
  assert configs.split_flags(["--config=d.py"])[0] == "d.py"


def test_train_cli_reports_a_bad_override_in_one_line(capsys, tmp_path):
  rc = cli.main(["train", "--config", str(CONFIGS / "tiny.py"), "--config.train.epochz=3",
                 "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1
  assert "config.train.epochz" in err and "epochs" in err
  rc = cli.main(["train", "--config", str(tmp_path / "missing.py"), "--workdir", "w"])
  assert rc == 2 and "missing.py" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def test_check_positive_is_one_line_naming_the_field_and_the_first_bad_value():
  assert configs.check_positive("--K", 5) == [5]
  assert configs.check_positive("--k-values", (8, 16)) == [8, 16]
  assert configs.check_positive("--L", None) == []  # not given: nothing to check
  with pytest.raises(InputError, match=r"^command line: --k-values: expected an integer >= 1, "
                     r"found 0$"):
    configs.check_positive("--k-values", [8, 0, -1])
  with pytest.raises(InputError, match=r"^command line: --seeds: expected an integer >= 1, "
                     r"found none$"):
    configs.check_positive("--seeds", [])
  with pytest.raises(InputError, match=r"^experiment: --K: expected an integer >= 1, found -2$"):
    configs.check_positive("--K", -2, source="experiment")


def test_the_rerank_flags_check_is_the_one_check():
  import argparse  # noqa: PLC0415
  from csa_jax.cli import rerank_flags  # noqa: PLC0415
  args = argparse.Namespace(K=4, batch_size=0, block=None)
  rerank_flags.check_positive(args, ("K", "block"))
  with pytest.raises(InputError, match=r"^command line: --batch-size: expected an integer >= 1, "
                     r"found 0$"):
    rerank_flags.check_positive(args, ("K", "batch_size", "block"))


def test_tiny_overrides_are_configs_tiny_values():
  tiny = configs.load("tiny")
  got = configs.tiny_overrides()
  assert list(got) == list(configs.TINY_KEYS)
  assert got["model.anchors"] == tiny.model.anchors and got["data.K"] == tiny.data.K
  assert got["train.epochs"] == tiny.train.epochs and got["model.dim"] == tiny.model.dim
