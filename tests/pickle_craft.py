"""Pickles and torch checkpoints written by hand, opcode by opcode, as an attacker would.

``Crafter`` writes globals by name (whether or not they exist here), persistent ids and BUILD on
anything, so nothing here imports torch or csa_jax. ``crafted_model`` is the tiny fixture model in
torch.save's layout; a test changes one field of it to make it hostile. Shared by
``tests/cli/test_hostile_pickles.py``, ``tests/data/test_safe_pickle.py`` and
``tests/interop/test_pth.py``.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import pickletools
import struct
import zipfile

import numpy as np

DATA = pathlib.Path(__file__).parent / "fixtures"


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
  """The pure-Python pickler, also writing ``G`` as GLOBAL, ``Build`` as BUILD, ``Pid`` ids."""

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
  """``obj`` pickled by ``Crafter``."""
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

