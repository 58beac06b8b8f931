"""Crafted pickles and torch checkpoints given to ``csa-jax eval --model`` and ``convert-data``.

Every case runs the real CLI in its own process (``hostile_cli``: 3 GiB address space, a
timeout), so a file that would crash the interpreter, read out of bounds, exhaust memory or run
code fails its case, not the session. Bad input: exit 2 and one error line naming the file and
what is wrong. Legitimate numpy pickles of every protocol convert with exit 0, unchanged.

Files are written opcode by opcode (``Crafter``: globals by name, persistent ids, BUILD on
anything), as an attacker would, so nothing here imports torch or csa_jax. A crafted checkpoint
is the tiny fixture model in torch.save's layout with one field made hostile: the same file
without the change loads and re-ranks (``test_honest_crafted_checkpoint_runs``), so each refusal
is that field's doing. The other test modules reuse these helpers.
"""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import pickletools
import struct
import zipfile

import numpy as np
import pytest

from hostile_cli import expect_input_error, expect_ok, run_cli

DATA = pathlib.Path(__file__).parents[1] / "fixtures"
C, NQ, NDB = 8, 3, 40


# ----------------------------------------------------------------------------------------------
# Writing pickles by hand.


class G:
  """A global the stream names (GLOBAL module name), whether or not it exists here."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # the pickler only accepts callables as REDUCE targets
    raise TypeError("a marker, not a function")


class Call:
  """``fn(*args)`` in the stream, followed by BUILD ``state`` when one is given."""

  def __init__(self, fn, *args, state=None):
    self.fn, self.args, self.state = fn, args, state

  def __reduce__(self):
    return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


class Build:
  """``target`` then BUILD ``state`` on it: pickle itself never writes BUILD on a global."""

  def __init__(self, target, state):
    self.target, self.state = target, state


class Pid:
  """A persistent id (BINPERSID), as torch.save writes for storages."""

  def __init__(self, *pid):
    self.pid = pid


class Crafter(pickle._Pickler):
  dispatch = dict(pickle._Pickler.dispatch)

  def persistent_id(self, obj):
    return obj.pid if isinstance(obj, Pid) else None

  def _save_global(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  def _save_build(self, obj):
    self.save(obj.target)
    self.save(obj.state)
    self.write(pickle.BUILD)

  dispatch[G] = _save_global
  dispatch[Build] = _save_build


def craft(obj, protocol: int = 2) -> bytes:
  f = io.BytesIO()
  Crafter(f, protocol).dump(obj)
  return f.getvalue()


def rename_numpy_core(data: bytes, old: str = "numpy._core", new: str = "numpy.core") -> bytes:
  """The same pickle naming numpy's other module path (numpy 1.x <-> 2.x), frames dropped."""
  out = bytearray()
  ops = list(pickletools.genops(data))
  for i, (op, arg, pos) in enumerate(ops):
    end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
    if op.name == "FRAME":
      continue
    if op.name == "GLOBAL" and arg.startswith(old + "."):
      out += b"c" + arg.replace(old, new, 1).replace(" ", "\n").encode() + b"\n"
    elif op.name in ("SHORT_BINUNICODE", "BINUNICODE") and arg.startswith(old + "."):
      text = arg.replace(old, new, 1).encode()
      out += b"\x8c" + bytes([len(text)]) + text
    else:
      out += data[pos:end]
  return bytes(out)


def nested_list_pickle(depth: int) -> bytes:
  """{'db': [[[...]]]} nested ``depth`` lists deep: one EMPTY_LIST and one APPEND per level."""
  return b"\x80\x02}X\x02\x00\x00\x00db" + b"]" * depth + b"a" * (depth - 1) + b"s."


def laughs_pickle(levels: int = 12, width: int = 20000) -> bytes:
  """{'db': L12}: L0 holds 8 floats and each L(i) ``width`` memo references to L(i-1).

  1.2 MB on disk; expanded, 8 * 20000**12 floats.
  """
  out = bytearray(b"\x80\x02}X\x02\x00\x00\x00db")
  out += b"](" + b"G?\xe0\x00\x00\x00\x00\x00\x00" * 8 + b"er" + struct.pack("<I", 0)
  for i in range(1, levels + 1):
    out += b"0](" + (b"j" + struct.pack("<I", i - 1)) * width + b"er" + struct.pack("<I", i)
  return bytes(out + b"s.")


# ----------------------------------------------------------------------------------------------
# torch.save's layout, by hand.

REBUILD = G("torch._utils", "_rebuild_tensor_v2")
FLOAT = G("torch", "FloatStorage")
ODICT = G("collections", "OrderedDict")
RECONSTRUCT = G("numpy._core.multiarray", "_reconstruct")
NDARRAY = G("numpy", "ndarray")
DTYPE = G("numpy", "dtype")


def c_strides(size) -> tuple[int, ...]:
  out, step = [], 1
  for n in reversed(size):
    out.append(step)
    step *= n
  return tuple(reversed(out))


def tensor(key, numel, size, stride=None, offset=0, storage=None):
  """``_rebuild_tensor_v2`` as torch.save writes it; ``storage`` replaces the persistent id."""
  st = Pid("storage", FLOAT, key, "cpu", numel) if storage is None else storage
  return Call(REBUILD, st, offset, tuple(size), c_strides(size) if stride is None else stride,
              False, Call(ODICT))


def tiny_model():
  """(state_dict of crafted tensors, {key: storage bytes}) for the fixture model."""
  ref = np.load(DATA / "csa_tiny_reference.npz")
  sd, storages = {}, {}
  for i, k in enumerate(f for f in ref.files if f.startswith("param/")):
    a = ref[k]
    sd[k[len("param/"):]] = tensor(str(i), a.size, a.shape)
    storages[str(i)] = a.astype("<f4").tobytes()
  return sd, storages


def write_pth(path, tree, storages: dict, byteorder: bytes | None = b"little",
              protocol: int = 2):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", craft(tree, protocol))
    if byteorder is not None:
      zf.writestr("archive/byteorder", byteorder)
    for k, b in storages.items():
      zf.writestr(f"archive/data/{k}", b)
  return path


def crafted_model(path, change=None, before=None, after=None, byteorder=b"little", protocol=2):
  """The fixture model as a crafted .pth; ``change(sd, storages)`` edits it first, ``before`` /
  ``after`` are dict entries pickled before / after the weights. Protocol 3 writes bytes as
  BINBYTES (protocol 2, as torch, goes through ``_codecs.encode``)."""
  sd, storages = tiny_model()
  if change is not None:
    change(sd, storages)
  tree = dict(before or {})
  tree.update(epoch=7, state_dict=sd)
  tree.update(after or {})
  return write_pth(path, tree, storages, byteorder, protocol)


def lie_about_size(data: bytes, member: str, size: int) -> bytes:
  """The zip with both headers of ``member`` declaring ``size`` bytes (compressed and not)."""
  out = bytearray(data)
  name = member.encode()
  for sig, name_at, len_at, sizes_at in ((b"PK\x03\x04", 30, 26, 18), (b"PK\x01\x02", 46, 28, 20)):
    i = out.find(sig)
    while i >= 0:
      (n,) = struct.unpack_from("<H", out, i + len_at)
      if out[i + name_at:i + name_at + n] == name:
        struct.pack_into("<II", out, i + sizes_at, size, size)
      i = out.find(sig, i + 4)
  return bytes(out)


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
