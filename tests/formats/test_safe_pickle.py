"""The restricted unpickler loads data, never runs code, and never outgrows its file.

Crafting helpers (``Call``, ``G``, ``Build``, ``craft``) come from ``tests/pickle_craft.py``.
"""

import collections
import io
import os
import pickle
import struct

import numpy as np
import pytest

from csa_jax import InputError
from csa_jax.formats import pickle_globals, safe_pickle
from csa_jax.formats.safe_pickle import (MAX_DEPTH, NUMPY_GLOBALS, Budget, check_graph, load_data,
                                         loads_data, unpickle)
from pickle_craft import (DTYPE, NDARRAY, RECONSTRUCT, Build, Call, G, craft, laughs_pickle,
                          nested_list_pickle, rename_numpy_core)


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


# ----------------------------------------------------------------------------------------------
# Legitimate numpy pickles of every protocol, under both module names.

ARRAYS = {
    "f32_2d": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "f32_1d": np.linspace(-1, 1, 9, dtype=np.float32),
    "f64": np.linspace(0, 1, 5),
    "i64": np.arange(-3, 3, dtype=np.int64),
    "fortran": np.asfortranarray(np.arange(24.0).reshape(4, 6)),
    "fortran_f32": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    "empty": np.zeros((0, 3), np.float32),
    "big": np.arange(300_000, dtype=np.float32).reshape(1000, 300),  # numpy keeps its bytes
}


@pytest.mark.parametrize("module", ["numpy._core", "numpy.core"])
@pytest.mark.parametrize("protocol", range(6))
def test_numpy_pickles_round_trip(tmp_path, protocol, module):
  obj = {"arrays": ARRAYS, "list": [1, 2.5, "x", None], "names": ["a", "é"],
         "nested": {"ids": [ARRAYS["i64"], (1, 2)]}}
  data = pickle.dumps(obj, protocol=protocol)
  if module == "numpy.core":
    data = rename_numpy_core(data)
    assert b"numpy._core" not in data
  (tmp_path / "x.pkl").write_bytes(data)
  for got in (loads_data(data), load_data(tmp_path / "x.pkl")):
    for k, a in ARRAYS.items():
      b = got["arrays"][k]
      assert type(b) is np.ndarray and b.dtype == a.dtype and b.shape == a.shape, k
      assert b.flags.f_contiguous == a.flags.f_contiguous, k
      np.testing.assert_array_equal(b, a)
    assert got["list"] == [1, 2.5, "x", None] and got["names"] == ["a", "é"]
    np.testing.assert_array_equal(got["nested"]["ids"][0], ARRAYS["i64"])
    assert got["nested"]["ids"][1] == (1, 2)


def test_dtypes_scalars_and_object_arrays():
  obj = {"be": np.dtype(">f8"), "u": np.array(["ab", "c"]), "obj": np.array([1, "a", None], object),
         "when": np.array(["2020-01-01"], "M8[ns]"), "scalar": np.int64(-5), "c": np.complex64(1j),
         "ba": bytearray(b"xy"), "b": b"", "s": {1, 2}, "fs": frozenset({"a"})}
  for protocol in range(6):
    got = loads_data(pickle.dumps(obj, protocol=protocol))
    ref = pickle.loads(pickle.dumps(obj, protocol=protocol))
    assert got["be"] == np.dtype(">f8") and got["be"].byteorder == ">"
    for k in ("u", "obj", "when"):
      assert got[k].dtype == ref[k].dtype and got[k].tolist() == ref[k].tolist()
    assert [got[k] for k in ("scalar", "c", "ba", "b", "s", "fs")] == \
        [ref[k] for k in ("scalar", "c", "ba", "b", "s", "fs")]
    assert type(got["scalar"]) is np.int64


def test_frombuffer_arrays_own_their_buffer():
  fb = G("numpy._core.numeric", "_frombuffer")
  buf = bytearray(np.arange(4, dtype=np.float32).tobytes())
  got = loads_data(craft([Call(fb, buf, np.dtype("f4"), (4,), "C"),
                          Call(fb, buf, np.dtype("f4"), (2, 2), "F"),
                          Call(fb, bytes(buf), np.dtype("f4"), (4,), "C")], protocol=5))
  a, b, ro = got
  assert a.flags.writeable and b.flags.writeable and not ro.flags.writeable
  a[0] = 9  # the second user of one buffer got a copy
  np.testing.assert_array_equal(b, np.arange(4, dtype=np.float32).reshape(2, 2, order="F"))


# ----------------------------------------------------------------------------------------------
# What the graph check counts.


def test_check_graph_counts_every_reference():
  inner = [1] * 10
  assert check_graph([inner] * 10, Budget("s")) == 1 + 10 * 11
  assert check_graph({"a": np.zeros((3, 4)), "s": "x" * 40}, Budget("s")) == 1 + 1 + 13 + 1 + 3
  small = Budget("s")
  small.limit = 100
  with pytest.raises(InputError, match=r"s: pickle: expected data that expands to at most 100 "
                     r"items .*billion laughs"):
    check_graph([inner] * 10, small)


def test_check_graph_depth_cycles_and_non_data():
  deep = leaf = []
  for _ in range(MAX_DEPTH - 1):
    leaf.append([])
    leaf = leaf[0]
  assert check_graph(deep, Budget("s")) == MAX_DEPTH
  leaf.append([])
  with pytest.raises(InputError, match=r"nesting at most 100 levels deep"):
    check_graph(deep, Budget("s"))
  loop = [1]
  loop.append({"x": loop})
  with pytest.raises(InputError, match=r"without reference cycles, found a list of 2 items"):
    check_graph(loop, Budget("s"))
  with pytest.raises(InputError, match=r"found numpy\.dtype in the result"):
    check_graph({"x": NUMPY_GLOBALS[("numpy", "dtype")]}, Budget("s"))


def test_expanding_and_deep_pickles_fail_fast():
  with pytest.raises(InputError, match=r"<bytes>: pickle: .*billion laughs"):
    loads_data(laughs_pickle())
  with pytest.raises(InputError, match=r"nesting at most 100 levels deep"):
    loads_data(nested_list_pickle(100_000))
  # Converting one memoised string a million times is work the file did not pay for.
  text = "x" * 10_000
  calls = [Call(G("_codecs", "encode"), text, "latin1") for _ in range(2000)]
  with pytest.raises(InputError, match=r"units of work .* decoding bytes"):
    loads_data(craft(calls))


@pytest.mark.parametrize("data,found", [
    (b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"xx", "claiming 1099511627776 bytes"),
    (b"\x80\x05\x96" + struct.pack("<Q", 2**33) + b"xx", "BYTEARRAY8 claiming 8589934592"),
    (b"\x80\x02\x8b" + struct.pack("<i", 2**30) + b"xx", "claiming 1073741824 bytes"),
    (b"\x80\x02X" + struct.pack("<I", 2**31) + b"xx", "claiming 2147483648 bytes"),
    (b"\x80\x02C\x05ab", "claiming 5 bytes with 2 left"),
])
def test_length_fields_cannot_claim_more_than_the_file(data, found):
  with pytest.raises(InputError, match=rf"pickle: expected a complete pickle, found .*{found}"):
    loads_data(data)


# ----------------------------------------------------------------------------------------------
# Nothing a pickle does changes the loader or runs code.


def test_build_on_globals_is_refused_and_changes_nothing():
  g = NUMPY_GLOBALS[("numpy", "dtype")]
  for target in (DTYPE, RECONSTRUCT, G("numpy", "float32"), G("collections", "OrderedDict")):
    evil = craft([Build(target, (None, {"call": None, "__defaults__": ()}))])
    with pytest.raises(InputError, match=r"object state \(BUILD\) only for .*; refused"):
      loads_data(evil)
  assert g.call is pickle_globals._dtype and np.float32.__name__ == "float32"
  with pytest.raises(AttributeError):
    g.call = None
  np.testing.assert_array_equal(loads_data(pickle.dumps(np.arange(3.0))), np.arange(3.0))


@pytest.mark.parametrize("state", [
    (3, "|", None, ("a",), {"a": (np.dtype("f8"), 10**6)}, 8, 1, 16),  # field far outside
    (3, "<", (np.dtype("f8"), (10**6,)), None, None, 8, 1, 0),  # subarray bigger than itemsize
    (3, "<", None, None, None, 4000, 4, 8),  # itemsize of a U1 rewritten
    (3, "<", None, None, None, -1, -1, 63),  # object flags on a number
    [3, "<", None, None, None, -1, -1, 0],  # numpy's state, but a list
])
def test_crafted_dtype_state_is_refused(state):
  name = {16: "V8", 8: "U1"}.get(state[-1], "f8")
  evil = craft([Call(DTYPE, name, False, True, state=state)], protocol=3)
  with pytest.raises(InputError, match=r"expected numpy's own state for dtype"):
    loads_data(evil)


def test_dtype_state_only_once_and_before_use():
  d = Call(DTYPE, "f8", False, True)
  arr = Call(RECONSTRUCT, NDARRAY, (0,), b"b", state=(1, (1,), d, False, b"\0" * 8))
  # The same dtype object BUILT again after an array used it: refused, not applied.
  again = craft([arr, Build(d, (3, ">", None, None, None, -1, -1, 0))], protocol=3)
  with pytest.raises(InputError, match=r"BUILD\) only for .* just made, found state for dtype"):
    loads_data(again)
  twice = craft([Build(Call(DTYPE, "f8", False, True, state=(3, "<", None, None, None, -1, -1,
                                                             0)), (3, ">", None, None, None,
                                                                   -1, -1, 0))], protocol=3)
  with pytest.raises(InputError, match=r"BUILD\) only for"):
    loads_data(twice)


@pytest.mark.parametrize("call,found", [
    (Call(G("_codecs", "encode"), "abc", "rot13"), r"_codecs\.encode\('abc', 'rot13'\)"),
    (Call(G("_codecs", "encode"), "eJw=", "base64"), r"'base64'"),
    (Call(G("numpy._core.numeric", "_frombuffer"), b"\0" * 8, np.dtype("O"), (1,), "C"),
     "an object dtype"),
    (Call(G("numpy._core.numeric", "_frombuffer"), b"\0" * 8, np.dtype("f4"), (2,), "K"),
     "order 'C' or 'F'"),
    (Call(G("numpy._core.numeric", "_frombuffer"), b"\0" * 8, np.dtype("f4"), (-2,), "C"),
     "non-negative ints, found \\(-2,\\)"),
    (Call(G("numpy._core.numeric", "_frombuffer"), b"\0" * 8, np.dtype("f4"), (True, 2), "C"),
     "non-negative ints"),
    (Call(G("numpy._core.numeric", "_frombuffer"), "text", np.dtype("u1"), (4,), "C"),
     "raw bytes, found 'text'"),
    (Call(RECONSTRUCT, G("numpy", "float32"), (0,), b"b"), r"_reconstruct\(numpy\.ndarray"),
    (Call(RECONSTRUCT, NDARRAY, (10**9,), b"b"), r"_reconstruct\(numpy\.ndarray"),
    (Call(RECONSTRUCT, NDARRAY, (0,), b"b", state=(1, (2,), np.dtype("O"), False, [1])),
     "a list of 2 items for a \\(2,\\) object array"),
    (Call(G("numpy._core.multiarray", "scalar"), np.dtype("f8"), b"\0" * 4), "8 bytes"),
    (Call(G("numpy", "float32"), 1.0), "calls only to allowlisted data constructors"),
    (Call(G("collections", "OrderedDict"), [("a", 1)]), r"OrderedDict\(\) without arguments"),
    (Call(G("builtins", "set"), [[1]]), "dict keys and set items of plain types"),
])
def test_wrappers_validate_their_arguments(call, found):
  with pytest.raises(InputError, match=rf"<bytes>: pickle: expected .*{found}"):
    loads_data(craft({"x": call}, protocol=3))


@pytest.mark.parametrize("data,found", [
    (b"\x80\x02cnumpy\nndarray\n)\x81.", r"object construction \(NEWOBJ\)"),
    (b"(cnumpy\ndtype\nS'f8'\no.", r"object construction \(OBJ\)"),
    (b"(S'f8'\nicollections\nOrderedDict\n.", r"object construction \(INST\)"),
    (b"\x80\x05\x97.", "out-of-band buffer"),
    (b"\x80\x03cnumpy\nfloat32\nK\x00K\x01s.", r"SETITEM into a dict or OrderedDict, found "
                                                r"SETITEM into the type numpy\.float32"),
    (b"\x80\x03cnumpy\nfloat32\n(K\x01e.", "APPENDS into a list"),
    (b"\x80\x03}(]K\x01u.", "dict keys and set items of plain types .*found a list"),
    (b"\x80\x03}(K\x01\x85\x85K\x01u.", "dict keys and set items of plain types"),
    (b"\x80\x04\x8f(]\x90.", "dict keys"),  # frozenset of a list
    (b"\x80\x02cnumpy\ndtype\n.", r"found numpy\.dtype in the result"),
    (b"\x80\x02]cnumpy\nndarray\n\x85R.", "calls only to allowlisted data constructors"),
])
def test_opcodes_that_call_or_mutate_are_restricted(data, found):
  with pytest.raises(InputError, match=rf"<bytes>: pickle: expected .*{found}"):
    loads_data(data)


@pytest.mark.parametrize("data", [
    b"garbage",  # invalid load key
    b"\x80\x02J\x01\x00",  # BININT cut short
    b"\x80\x02.",  # STOP on an empty stack
    b"\x80\x020.",  # POP on an empty stack
    b"\x80\x02h\x05.",  # a memo entry never stored
    b"\x80\x09N.",  # an unknown protocol
    b"\x80\x02cnumpy\ndtype\nX\x03\x00\x00\x00zz9\x85R.",  # numpy refuses the dtype name
])
def test_every_failure_is_one_input_error(data):
  with pytest.raises(InputError, match=r"^<bytes>: pickle: expected [^\n]*$"):
    loads_data(data)


@pytest.mark.parametrize("exc,found", [(MemoryError, "a MemoryError"),
                                       (RecursionError, "a RecursionError")])
def test_memory_and_recursion_errors_are_input_errors(monkeypatch, exc, found):
  def boom(*args):
    raise exc()
  monkeypatch.setattr(safe_pickle, "check_graph", boom)
  with pytest.raises(InputError, match=rf"^x: pickle: expected .*, found {found}"):
    unpickle(io.BytesIO(pickle.dumps([1])), 20, "x")
