"""Reading real torch.save files without torch, and refusing malicious ones.

Crafting helpers (``crafted_model``, ``tensor``, ``Pid``, ``Build``, ...) come from
``tests/pickle_craft.py``; ``tests/cli/test_hostile_pickles.py`` runs the same kinds of files
through the CLI.
"""

import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from csa_jax import InputError, load_torch_checkpoint, rerank_scores
from csa_jax.formats import torch_globals as tc
from csa_jax.formats.torch_file import STORAGE_TYPES, TORCH_GLOBALS, check_view, read_torch_file
from pickle_craft import (FLOAT, REBUILD, Build, Call, G, Pid, crafted_model, lie_about_size,
                          tensor, write_pth)


def test_reads_real_torch_file(data_dir):
  # csa_tiny_original.pth was written by torch.save (tools/make_tiny_pth.py) from the fixture.
  ref = np.load(data_dir / "csa_tiny_reference.npz")
  obj = read_torch_file(data_dir / "csa_tiny_original.pth")
  assert obj["epoch"] == 7
  for k, v in obj["state_dict"].items():
    np.testing.assert_array_equal(v, ref[f"param/{k}"])
  params, cfg = load_torch_checkpoint(data_dir / "csa_tiny_original.pth", heads=4)
  np.testing.assert_allclose(np.asarray(rerank_scores(params, ref["x"], cfg)), ref["scores"],
                             atol=1e-5)


class _Evil:
  def __init__(self, cmd):
    self.cmd = cmd

  def __reduce__(self):
    return (os.system, (self.cmd,))


def _zip_checkpoint(path, payload: bytes):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", payload)
    zf.writestr("archive/byteorder", "little")


@pytest.mark.parametrize("make", [
    lambda cmd: pickle.dumps({"state_dict": _Evil(cmd)}, protocol=2),
    lambda cmd: pickle.dumps({"epoch": 1, "state_dict": {"topk_proj.weight": _Evil(cmd)}}),
])
def test_refuses_code_execution(tmp_path, make):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  _zip_checkpoint(path, make(f"touch {marker}"))
  with pytest.raises(InputError, match=r"evil\.pth: data\.pkl: pickle: .*found a reference to "
                     r"(posix|os|nt)\.system; refused without running it"):
    load_torch_checkpoint(path)
  assert not marker.exists()


def test_refuses_builtin_eval(tmp_path):
  marker = tmp_path / "pwned"
  payload = (b"\x80\x02cbuiltins\neval\nq\x00X" + len(f"open('{marker}','w')").to_bytes(4, "little")
             + f"open('{marker}','w')".encode() + b"q\x01\x85q\x02Rq\x03.")
  path = tmp_path / "evil.pth"
  _zip_checkpoint(path, payload)
  with pytest.raises(InputError, match=r"builtins\.eval; refused"):
    read_torch_file(path)
  assert not marker.exists()


def test_legacy_and_missing_files_are_clear_errors(tmp_path):
  legacy = tmp_path / "old.pth"
  legacy.write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(InputError, match=r"old\.pth: format: expected a zip-format torch\.save"):
    read_torch_file(legacy)
  with pytest.raises(InputError, match=r"nothere\.pth: file: .*found no such file"):
    read_torch_file(tmp_path / "nothere.pth")


def test_truncated_storage_is_a_clear_error(tmp_path, data_dir):
  src = zipfile.ZipFile(data_dir / "csa_tiny_original.pth")
  bad = tmp_path / "trunc.pth"
  with zipfile.ZipFile(bad, "w") as zf:
    for n in src.namelist():
      data = src.read(n)
      zf.writestr(n, data[: len(data) // 2] if n.endswith("/data/0") else data)
  with pytest.raises(InputError, match=r"trunc\.pth: .*data/0: expected \d+ elements, found"):
    read_torch_file(bad)


def test_storage_views_and_dtypes(data_dir):
  # torch_dtypes.pth was written by torch.save (tools/make_tiny_pth.py).
  got = read_torch_file(data_dir / "torch_dtypes.pth")
  base = np.arange(24, dtype=np.float32).reshape(4, 6)
  np.testing.assert_array_equal(got["t"], base.T)
  np.testing.assert_array_equal(got["offset"], base[1:, 2:])
  assert got["half"].dtype == np.float16 and got["bf16"].dtype == np.float32
  np.testing.assert_array_equal(got["half"], base[0])
  np.testing.assert_array_equal(got["bf16"], base[1])
  assert got["long"].dtype == np.int64
  np.testing.assert_array_equal(got["long"], np.arange(5))


# ----------------------------------------------------------------------------------------------
# Views must lie inside their storage.


@pytest.mark.parametrize("numel,offset,size,stride", [
    (24, 0, (4, 6), (6, 1)),
    (24, 0, (6, 4), (1, 6)),  # transposed
    (24, 8, (2, 4), (6, 1)),  # offset view, last element 23
    (5, 4, (1,), (10**30,)),  # a size-1 dimension's stride moves nowhere
    (1, 0, (3, 4), (0, 0)),  # broadcast (expand)
    (0, 0, (0, 5), (5, 1)),  # empty tensor, empty storage
    (0, 7, (0,), (1,)),  # no element is read: any offset
    (1, 0, (), ()),  # a 0-d tensor
])
def test_views_inside_their_storage_pass(numel, offset, size, stride):
  check_view(numel, offset, size, stride, "s")


@pytest.mark.parametrize("numel,offset,size,stride,match", [
    (24, 1, (4, 6), (6, 1), r"tensor view: expected elements inside its storage of 24, found "
                            r"offset 1, .* reaching element 24"),
    (4, 0, (16, 8), (8, 1), r"tensor view: .*storage of 4"),
    (24, 0, (4, 6), (10**9, 1), r"tensor view"),
    (24, 10**6, (1,), (1,), r"tensor view"),
    (24, 0, (4, 6), (-6, 1), r"tensor stride: expected a tuple of at most 32 non-negative ints"),
    (24, -1, (1,), (1,), r"tensor offset: expected a non-negative int, found -1"),
    (24, True, (1,), (1,), r"tensor offset: expected a non-negative int, found True"),
    (24, 0, (4.0, 6), (6, 1), r"tensor size"),
    (24, 0, (True,), (1,), r"tensor size"),
    (24, 0, [4, 6], (6, 1), r"tensor size: .*found a list of 2 items"),
    (24, 0, (4, 6), (6,), r"tensor stride: expected one stride per dimension \(2\), found 1"),
    (10**9, 0, (1,) * 33, (1,) * 33, r"tensor size: expected a tuple of at most 32"),
])
def test_views_outside_their_storage_are_refused(numel, offset, size, stride, match):
  with pytest.raises(InputError, match=r"^s: " + match):
    check_view(numel, offset, size, stride, "s")


# ----------------------------------------------------------------------------------------------
# Storages: typed buffers of the declared size, nothing a pickle could make.


def test_crafted_honest_checkpoint_loads(tmp_path, data_dir):
  ref = np.load(data_dir / "csa_tiny_reference.npz")
  got = read_torch_file(crafted_model(tmp_path / "m.pth"))
  for k, v in got["state_dict"].items():
    np.testing.assert_array_equal(v, ref[f"param/{k}"])


def test_big_endian_checkpoint(tmp_path):
  base = np.arange(24, dtype=np.float32)
  write_pth(tmp_path / "be.pth", {"t": tensor("0", 24, (6, 4), (1, 6))},
            {"0": base.astype(">f4").tobytes()}, byteorder=b"big")
  got = read_torch_file(tmp_path / "be.pth")["t"]
  assert got.dtype == np.float32 and got.dtype.isnative
  np.testing.assert_array_equal(got, base.reshape(4, 6).T)


def _with(name, storage=None, **kw):
  def change(sd, storages):
    t = sd[name]
    args = dict(zip(("storage", "offset", "size", "stride"), t.args[:4]))
    if storage is not None:
      args["storage"] = storage
    args.update(kw)
    sd[name] = Call(REBUILD, args["storage"], args["offset"], args["size"], args["stride"],
                    False, Call(G("collections", "OrderedDict")))
  return change


W = "topk_proj.weight"


@pytest.mark.parametrize("kw,match", [
    ({"byteorder": b"middle"}, r"m\.pth: archive/byteorder: expected 'little' or 'big', found "
                               r"'middle'"),
    ({"byteorder": b"little" * 10}, r"archive/byteorder: expected 'little' or 'big', found 60 "),
    ({"change": _with(W, Pid("storage", FLOAT, "0", "cpu", 1537))},
     r"archive/data/0: expected 1537 elements, found 1536 \(6144 bytes in the zip\)"),
    ({"change": _with(W, Pid("storage", FLOAT, "0", 0, 1536))}, r"persistent id: .*string key"),
    ({"change": _with(W, Pid("storage", FLOAT, "0", "cpu", -1))},
     r"persistent id: .*element count"),
    ({"change": _with(W, Pid("storage", FLOAT, "0", "cpu", True))}, r"element count, found True"),
    ({"change": _with(W, Pid("storage", "FloatStorage", "0", "cpu", 1536))},
     r"persistent id: expected a storage type"),
    ({"change": _with(W, Pid("storage", FLOAT, "0", "cpu"))}, r"persistent id: expected \("),
    ({"change": _with(W, Pid("storage", G("torch", "ComplexFloatStorage"), "0", "cpu", 1536))},
     r"reference to torch\.ComplexFloatStorage; refused"),
    ({"change": _with(W, Pid("storage", FLOAT, "99", "cpu", 1536))},
     r"archive/data/99: expected a tensor storage, found none"),
    ({"after": {"x": tensor("0", 100, (2,))}},
     r"persistent id: expected storage 0 as first declared \(torch\.FloatStorage, 1536 "
     r"elements\), found torch\.FloatStorage, 100"),
    ({"after": {"x": tensor("0", 768, (2,), storage=Pid("storage", G("torch", "DoubleStorage"),
                                                          "0", "cpu", 768))}},
     r"persistent id: expected storage 0 as first declared .*found torch\.DoubleStorage, 768"),
    ({"change": _with(W, np.zeros(1536, np.float32))},
     r"expected _rebuild_tensor_v2 of a storage from the archive, found an array"),
    ({"change": lambda sd, st: sd.update(raw=Pid("storage", FLOAT, "0", "cpu", 1536))},
     r"data\.pkl: pickle: expected only data .*found storage '0' in the result"),
    ({"change": lambda sd, st: sd.update(x=Call(G("torch._utils", "_rebuild_parameter"), [1.0],
                                                False, collections.OrderedDict()))},
     r"_rebuild_parameter\(tensor, bool, hooks\)"),
])
def test_malformed_storages_are_refused(tmp_path, kw, match):
  with pytest.raises(InputError, match=match):
    read_torch_file(crafted_model(tmp_path / "m.pth", **kw))


def test_zip_headers_that_lie_are_refused(tmp_path):
  data = crafted_model(tmp_path / "ok.pth").read_bytes()
  (tmp_path / "big.pth").write_bytes(lie_about_size(data, "archive/data/0", 2**31))
  with pytest.raises(InputError, match=r"big\.pth: archive/data/0: expected a zip member inside "
                     r"the \d+-byte archive, found a header declaring 2147483648 bytes"):
    read_torch_file(tmp_path / "big.pth")
  (tmp_path / "pkl.pth").write_bytes(lie_about_size(data, "archive/data.pkl", 2**31))
  with pytest.raises(InputError, match=r"pkl\.pth: archive/data\.pkl: expected a zip member"):
    read_torch_file(tmp_path / "pkl.pth")


def test_deflate_ratio_beyond_what_deflate_can_do_is_refused(tmp_path):
  path = crafted_model(tmp_path / "m.pth")
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "z.pth", "w") as dst:
    for info in src.infolist():
      dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
  assert read_torch_file(tmp_path / "z.pth")["epoch"] == 7  # honest deflate is fine
  with zipfile.ZipFile(tmp_path / "z.pth") as zf:
    info = zf.getinfo("archive/data/0")
  data = bytearray((tmp_path / "z.pth").read_bytes())
  claimed = 2000 * info.compress_size
  for sig, name_at, len_at, size_at in ((b"PK\x03\x04", 30, 26, 22), (b"PK\x01\x02", 46, 28, 24)):
    i = data.find(sig)
    while i >= 0:
      n = int.from_bytes(data[i + len_at:i + len_at + 2], "little")
      if data[i + name_at:i + name_at + n] == b"archive/data/0":
        data[i + size_at:i + size_at + 4] = claimed.to_bytes(4, "little")
      i = data.find(sig, i + 4)
  (tmp_path / "bomb.pth").write_bytes(bytes(data))
  with pytest.raises(InputError, match=r"archive/data/0: expected a zip member inside .*"
                     rf"declaring {claimed} bytes"):
    read_torch_file(tmp_path / "bomb.pth")


# ----------------------------------------------------------------------------------------------
# Nothing a checkpoint does changes how the next one loads.


def test_build_on_allowlisted_function_changes_nothing(tmp_path, data_dir):
  defaults = tc._rebuild_tensor_v2.__defaults__
  for state in ((None, {"__defaults__": ()}), {"call": None}, {"__code__": None}):
    path = crafted_model(tmp_path / "evil.pth", after={"x": Build(REBUILD, state)})
    with pytest.raises(InputError, match=r"evil\.pth: data\.pkl: pickle: expected object state "
                       r"\(BUILD\) only for .*found state for torch\._utils\._rebuild_tensor_v2; "
                       r"refused"):
      read_torch_file(path)
  assert tc._rebuild_tensor_v2.__defaults__ == defaults
  assert TORCH_GLOBALS[("torch._utils", "_rebuild_tensor_v2")].call is tc._rebuild_tensor_v2
  assert read_torch_file(data_dir / "csa_tiny_original.pth")["epoch"] == 7  # the next load works


def test_build_on_storage_type_changes_nothing(tmp_path, data_dir):
  for state in ({"dtype": np.dtype("O")}, (None, {"dtype": np.dtype("f2")})):
    path = crafted_model(tmp_path / "evil.pth", before={"a": Build(FLOAT, state)})
    with pytest.raises(InputError, match=r"found state for torch\.FloatStorage; refused"):
      read_torch_file(path)
  assert STORAGE_TYPES["FloatStorage"].dtype == np.float32
  assert TORCH_GLOBALS[("torch", "FloatStorage")] is STORAGE_TYPES["FloatStorage"]
  with pytest.raises(AttributeError):
    STORAGE_TYPES["FloatStorage"].dtype = np.dtype("O")
  ref = np.load(data_dir / "csa_tiny_reference.npz")
  got = read_torch_file(data_dir / "csa_tiny_original.pth")["state_dict"]
  np.testing.assert_array_equal(got["topk_proj.weight"], ref["param/topk_proj.weight"])


# ----------------------------------------------------------------------------------------------
# What torch itself writes.


def test_reads_what_torch_saves(tmp_path):
  torch = pytest.importorskip("torch")
  base = torch.arange(24.0).reshape(4, 6)
  m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
  obj = {"sd": m.state_dict(), "p": torch.nn.Parameter(torch.ones(2, 3)),
         "empty": torch.zeros(0, 5), "scalar": torch.tensor(3.5),
         "expand": torch.ones(3, 1).expand(3, 4), "slice": base[::2, 1::3], "t": base.t(),
         **{str(d): torch.arange(5).to(d) for d in (torch.int8, torch.uint8, torch.int16,
                                                   torch.int32, torch.int64, torch.float16,
                                                   torch.float64, torch.bool)},
         "bf16": base[1].bfloat16(),
         "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]}}
  torch.save(obj, tmp_path / "x.pth")
  ref = torch.load(tmp_path / "x.pth")
  got = read_torch_file(tmp_path / "x.pth")
  assert isinstance(got["sd"], collections.OrderedDict) and list(got["sd"]) == list(ref["sd"])

  def same(a, b):
    if isinstance(a, torch.Tensor):
      want = a.detach().float().numpy() if a.dtype == torch.bfloat16 else a.detach().numpy()
      assert type(b) is np.ndarray and b.shape == want.shape and b.dtype == want.dtype
      np.testing.assert_array_equal(b, want)
    elif isinstance(a, dict):
      assert set(a) == set(b)
      for k in a:
        same(a[k], b[k])
    elif isinstance(a, list):
      assert len(a) == len(b)
      for x, y in zip(a, b):
        same(x, y)
    else:
      assert a == b
  same(ref, got)
