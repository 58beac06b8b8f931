"""Crafted pickles and torch checkpoints given to ``csa-jax eval --model`` and ``convert-data``.

Every case runs the real CLI in its own process (``hostile_cli``: 3 GiB address space, a
timeout), so a file that would crash the interpreter, read out of bounds, exhaust memory or run
code fails its case, not the session. Bad input: exit 2 and one error line naming the file and
what is wrong. Legitimate numpy pickles of every protocol convert with exit 0, unchanged.

Files are written opcode by opcode (``pickle_craft``: globals by name, persistent ids, BUILD on
anything), as an attacker would, so nothing here imports torch or csa_jax. A crafted checkpoint
is the tiny fixture model in torch.save's layout with one field made hostile: the same file
without the change loads and re-ranks (``test_honest_crafted_checkpoint_runs``), so each refusal
is that field's doing.
"""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest

from hostile_cli import expect_input_error, expect_ok, run_cli
from pickle_craft import (DTYPE, FLOAT, NDARRAY, ODICT, REBUILD, RECONSTRUCT, Build, Call, G, Pid,
                          craft, crafted_model, laughs_pickle, lie_about_size, nested_list_pickle,
                          rename_numpy_core, tensor)

# Each case boots csa-jax in a subprocess: the slow tier (see tests/conftest.py).
pytestmark = pytest.mark.slow

C, NQ, NDB = 8, 3, 40


# ----------------------------------------------------------------------------------------------
# The CLI cases.


def unit_rows(n: int, rng) -> np.ndarray:
  x = rng.normal(size=(n, C)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def case(tmp_path):
  """tmp_path holding small valid feats.npz (db 40x8, query 3x8) and gnd.json."""
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "feats.npz", db=unit_rows(NDB, rng), query=unit_rows(NQ, rng))
  gnd = {"gnd": [{"easy": [q, q + 1], "hard": [q + 2], "junk": []} for q in range(NQ)]}
  (tmp_path / "gnd.json").write_text(json.dumps(gnd))
  return tmp_path


def run_eval(cwd, model: str):
  return run_cli(["eval", "--features", "feats.npz", "--gnd", "gnd.json", "--model", model,
                  "--heads", "4", "--out", "res.json"], cwd)


def test_honest_crafted_checkpoint_runs(case):
  crafted_model(case / "m.pth")
  res = run_eval(case, "m.pth")
  expect_ok(res)
  assert json.loads((case / "res.json").read_text())["csa"] is not None


def _set(name, **kw):
  def change(sd, storages):
    t = sd[name]
    st, offset, size, stride = t.args[:4]
    kw2 = dict(storage=st, offset=offset, size=size, stride=stride)
    kw2.update(kw)
    sd[name] = Call(REBUILD, kw2["storage"], kw2["offset"], kw2["size"], kw2["stride"], False,
                    Call(ODICT))
  return change


def _tiny_storage(sd, storages):
  storages["tiny"] = np.zeros(4, "<f4").tobytes()
  sd["topk_proj.weight"] = tensor("tiny", 4, (48, 32))


W = "topk_proj.weight"  # (48, 32) float32, storage '0' of 1536 elements

PTH_CASES = {
    # (change(sd, storages) or None, extra kwargs of crafted_model, needles of the error line)
    "stride_huge": (_set(W, stride=(10**9, 1)), {}, ("m.pth", "tensor view")),
    "stride_negative": (_set(W, stride=(-10**7, 1)), {}, ("m.pth", "tensor stride")),
    "object_array_storage": (_set(W, storage=np.array([0.5] * 16, dtype=object)),
                             {"protocol": 3},
                             ("m.pth", "_rebuild_tensor_v2 of a storage from the archive")),
    "storage_smaller_than_size": (_tiny_storage, {}, ("m.pth", "tensor view", "storage of 4")),
    "offset_past_storage": (_set(W, offset=10**6), {}, ("m.pth", "tensor view")),
    "size_stride_length_mismatch": (_set(W, stride=(32,)), {}, ("m.pth", "tensor stride")),
    "non_int_size": (_set(W, size=(48.0, 32)), {}, ("m.pth", "tensor size")),
    "bool_offset": (_set(W, offset=True), {}, ("m.pth", "tensor offset")),
    "numel_lies": (_set(W, storage=Pid("storage", FLOAT, "0", "cpu", 10**9)), {},
                   ("m.pth", "archive/data/0", "expected 1000000000 elements")),
    "pid_key_not_str": (_set(W, storage=Pid("storage", FLOAT, 0, "cpu", 1536)), {},
                        ("m.pth", "persistent id", "string key")),
    "pid_type_not_storage": (_set(W, storage=Pid("storage", G("numpy", "float32"), "0", "cpu",
                                                 1536)), {}, ("m.pth", "persistent id")),
    "bogus_byteorder": (None, {"byteorder": b"middle"}, ("m.pth", "byteorder", "'middle'")),
    "build_on_rebuild_function": (None, {"after": {"x": Build(REBUILD, (None, {"__defaults__":
                                                                                 ()}))}},
                                  ("m.pth", "torch._utils._rebuild_tensor_v2; refused")),
    "build_on_storage_type": (None, {"before": {"a": Build(FLOAT, {"dtype": np.dtype("f2")})}},
                              ("m.pth", "torch.FloatStorage; refused")),
}


@pytest.mark.parametrize("name", list(PTH_CASES))
def test_crafted_checkpoint_is_refused(case, name):
  change, kw, needles = PTH_CASES[name]
  crafted_model(case / "m.pth", change=change, **kw)
  expect_input_error(run_eval(case, "m.pth"), *needles)
  assert not (case / "res.json").exists()


def test_checkpoint_member_declaring_a_huge_size(case):
  crafted_model(case / "ok.pth")
  data = (case / "ok.pth").read_bytes()
  (case / "m.pth").write_bytes(lie_about_size(data, "archive/data/0", 2**31 - 1))
  expect_input_error(run_eval(case, "m.pth"), "m.pth", "archive/data/0", "a zip member inside")


def test_checkpoint_running_os_system(case):
  marker = case / "pwned"
  crafted_model(case / "m.pth", change=lambda sd, st: sd.update(
      x=Call(G("os", "system"), f"touch {marker}")))
  expect_input_error(run_eval(case, "m.pth"), "m.pth", "os.system; refused without running it")
  assert not marker.exists()


@pytest.mark.parametrize("fn,payload", [
    (G("builtins", "eval"), "open({marker!r}, 'w')"),
    (G("posix", "system"), "touch {marker}"),
    (G("os", "system"), "touch {marker}"),
])
def test_pickle_running_code(case, fn, payload):
  marker = case / "pwned"
  (case / "x.pkl").write_bytes(craft({"db": Call(fn, payload.format(marker=str(marker)))}))
  res = run_cli(["convert-data", "x.pkl", "--out", "x.npz"], case)
  expect_input_error(res, "x.pkl", f"{fn.module}.{fn.name}; refused without running it")
  assert not marker.exists() and not (case / "x.npz").exists()


def _pickle_cases():
  a = np.zeros((16, 8), np.float32)
  return {
      "billion_laughs": (laughs_pickle(), ("billion laughs",)),
      "nested_100k_deep": (nested_list_pickle(100_000), ("nesting at most 100 levels",)),
      "truncated": (pickle.dumps({"db": a}, protocol=4)[:300], ("a complete pickle",)),
      "binbytes8_claims_1TiB": (b"\x80\x04}X\x02\x00\x00\x00db\x8e" + struct.pack("<Q", 2**40)
                                + b"x" * 16, ("claiming 1099511627776 bytes",)),
      "bytearray8_claims_2GiB": (b"\x80\x05}X\x02\x00\x00\x00db\x96" + struct.pack("<Q", 2**31)
                                 + b"x" * 16, ("BYTEARRAY8 claiming 2147483648 bytes",)),
      "setstate_bytes_mismatch": (craft({"db": Call(RECONSTRUCT, NDARRAY, (0,), b"b", state=(
          1, (16, 8), np.dtype("f4"), False, b"\0" * 16))}, protocol=3),
                                  ("512 bytes for a (16, 8) float32 array", "found 16 bytes")),
      "dtype_state_subarray": (craft({"db": Call(RECONSTRUCT, NDARRAY, (0,), b"b", state=(
          1, (40,), Call(DTYPE, "f8", False, True, state=(
              3, "<", (np.dtype("f8"), (10**6,)), None, None, 8, 1, 0)), False, b"\0" * 320))},
          protocol=3),
                               ("numpy's own state for dtype <f8",)),
      # A gnd file: its index lists are read element by element, field 'a' 1 TB past each.
      "dtype_state_field_offset": (craft({"gnd": [{"easy": Call(RECONSTRUCT, NDARRAY, (0,), b"b",
                                                              state=(
          1, (3,), Call(DTYPE, "V8", False, True, state=(
              3, "|", None, ("a",), {"a": (np.dtype("f8"), 10**12)}, 8, 1, 16)), False,
          b"\0" * 24)), "hard": [], "junk": []}]}, protocol=3),
                                   ("numpy's own state for dtype |V8",)),
      "frombuffer_bytes_mismatch": (craft({"db": Call(
          G("numpy._core.numeric", "_frombuffer"), bytearray(16), np.dtype("f4"), (16, 8), "C")},
          protocol=5), ("512 bytes for a (16, 8) float32 array",)),
      "object_dtype_array": (pickle.dumps({"db": np.full((40, 8), 0.5, dtype=object)}),
                             ("db", "dtype object")),
  }


PICKLE_CASES = _pickle_cases()


@pytest.mark.parametrize("name", list(PICKLE_CASES))
def test_crafted_pickle_is_refused(case, name):
  data, needles = PICKLE_CASES[name]
  (case / "x.pkl").write_bytes(data)
  res = run_cli(["convert-data", "x.pkl", "--out", "x.npz"], case)
  expect_input_error(res, "x.pkl", *needles)
  assert not (case / "x.npz").exists()


@pytest.mark.parametrize("protocol,module", [(p, "numpy._core") for p in range(6)]
                         + [(2, "numpy.core"), (5, "numpy.core")])
def test_numpy_pickles_of_every_protocol_convert(case, protocol, module):
  rng = np.random.default_rng(protocol)
  db, q = unit_rows(NDB, rng), unit_rows(NQ, rng)
  data = pickle.dumps({"db": db, "query": q}, protocol=protocol)
  if module != "numpy._core":
    data = rename_numpy_core(data)
    assert b"numpy.core." in data and b"numpy._core" not in data
  (case / "x.pkl").write_bytes(data)
  expect_ok(run_cli(["convert-data", "x.pkl", "--out", "x.npz"], case))
  with np.load(case / "x.npz") as z:
    assert set(z.files) == {"db", "query"}
    np.testing.assert_array_equal(z["db"], db)
    np.testing.assert_array_equal(z["query"], q)
