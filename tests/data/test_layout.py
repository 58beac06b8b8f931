"""Test sets of a data root in the original layout, found by name before anything is read."""

import pytest

from csa_jax.data import layout
from csa_jax.errors import InputError


def touch(p):
  p.parent.mkdir(parents=True, exist_ok=True)
  p.write_text("x")
  return str(p)


def test_finds_each_dataset_and_prefers_the_layout_order(tmp_path):
  f1 = touch(tmp_path / "test" / "roxford5k" / "gl18.pkl")
  touch(tmp_path / "test" / "roxford5k" / "gl18.npz")  # .pkl comes first
  g1 = touch(tmp_path / "annotations" / "roxford5k" / "gnd_roxford5k.pkl")
  f2 = touch(tmp_path / "test" / "rparis6k" / "gl18.npz")
  g2 = touch(tmp_path / "test" / "rparis6k" / "gnd_rparis6k.json")  # cnnimageretrieval's place
  got = layout.test_set_files(tmp_path, "gl18", ["roxford5k", "rparis6k"])
  assert got == [layout.TestSetFiles("roxford5k", f1, g1),
                 layout.TestSetFiles("rparis6k", f2, g2)]
  touch(tmp_path / "test" / "r1m" / "gl18.pkl")
  r1m = touch(tmp_path / "test" / "r1m" / "gl18.npy")  # memory-mappable: preferred
  assert layout.r1m_file(tmp_path, "gl18") == r1m


@pytest.mark.parametrize("bad", ["no_root", "no_features", "no_gnd", "path_name", "dotdot"])
def test_missing_or_bad_names_fail_at_once(tmp_path, bad):
  touch(tmp_path / "test" / "a" / "f.npz")
  touch(tmp_path / "annotations" / "a" / "gnd_a.json")
  root, features, ds = tmp_path, "f", ["a", "b"]
  want = "--datasets: expected test sets with f descriptors and a gnd file (this root has: a), " \
      "found 'b': no test/b/f.*"
  if bad == "no_root":
    root, want = tmp_path / "nope", "nope: --data: expected a data root directory"
  elif bad == "no_gnd":
    touch(tmp_path / "test" / "b" / "f.npz")
    want = "found 'b': no gnd_b.* (annotations/b/ or test/b/)"
  elif bad == "path_name":
    features, want = "x/f.npz", "command line: --features: expected a name under --data"
  elif bad == "dotdot":
    ds, want = [".."], "command line: --datasets: expected a name"
  with pytest.raises(InputError) as e:
    layout.test_set_files(root, features, ds)
  assert want in str(e.value)


def test_test_set_names_with_and_without_ground_truth(tmp_path):
  touch(tmp_path / "test" / "roxford5k" / "gl18.npz")
  touch(tmp_path / "annotations" / "roxford5k" / "gnd_roxford5k.pkl")
  touch(tmp_path / "test" / "rparis6k" / "gl18.pkl")
  touch(tmp_path / "test" / "rparis6k" / "gnd_rparis6k.json")  # beside the features
  touch(tmp_path / "test" / "lonely" / "gl18.npy")  # no gnd anywhere
  touch(tmp_path / "test" / "other" / "gem.npz")  # another descriptor set
  touch(tmp_path / "annotations" / "other" / "gnd_other.pkl")
  touch(tmp_path / "test" / "r1m" / "gl18.npy")  # the distractors are no test set
  assert layout.test_set_names(tmp_path, "gl18") == ["roxford5k", "rparis6k"]
  assert layout.test_set_names(tmp_path, "gl18", with_gnd=False) == ["lonely"]
  assert layout.test_set_names(tmp_path) == ["other", "roxford5k", "rparis6k"]
