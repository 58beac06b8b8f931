"""The restricted unpickler loads data and never runs code."""

import collections
import os
import pickle

import numpy as np
import pytest

from csa_jax import InputError
from csa_jax.safe_pickle import load_data, loads_data


def test_loads_arrays_and_containers():
  obj = {"train": {"cluster": [1, 2, 3], "cids": ["a", "b"], "x": np.arange(6.0).reshape(2, 3),
                   "f16": np.ones(2, np.float16), "scalar": np.float32(2.5)},
         "od": collections.OrderedDict(a=(1, 2)), "s": {1, 2}}
  got = loads_data(pickle.dumps(obj))
  np.testing.assert_array_equal(got["train"]["x"], obj["train"]["x"])
  assert got["train"]["cids"] == ["a", "b"] and got["od"] == obj["od"] and got["s"] == {1, 2}
  assert got["train"]["scalar"] == np.float32(2.5)


class _Reduce:
  def __init__(self, fn, args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return (self.fn, self.args)


@pytest.mark.parametrize("fn,name", [(os.system, "system"), (eval, "eval"),
                                     (__import__, "__import__")])
def test_refuses_code(tmp_path, fn, name):
  marker = tmp_path / "ran"
  arg = f"touch {marker}" if fn is os.system else f"open({str(marker)!r}, 'w')"
  if fn is __import__:
    arg = "antigravity"
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"db": _Reduce(fn, (arg,))}))
  with pytest.raises(InputError, match=rf"evil\.pkl: pickle: .*{name}; refused without running"):
    load_data(path)
  assert not marker.exists()


def test_truncated_and_missing(tmp_path):
  p = tmp_path / "t.pkl"
  p.write_bytes(pickle.dumps({"a": np.arange(100)})[:50])
  with pytest.raises(InputError, match=r"t\.pkl: pickle: expected a complete pickle"):
    load_data(p)
  with pytest.raises(InputError, match=r"none\.pkl: file: expected a readable pickle"):
    load_data(tmp_path / "none.pkl")
