"""The numpy ``.safetensors`` reader and writer: exact round trips, the reference implementation
both ways, and hostile files refused in one line before anything is allocated."""

from __future__ import annotations

import json
import os
import re
import struct

import ml_dtypes
import numpy as np
import pytest

from csa_jax import InputError
from csa_jax.formats import safetensors_file as stf


def _every_dtype() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  out = {}
  for code, dt in stf.DTYPES.items():
    if dt == np.bool_:
      out[code] = rng.random((3, 2)) > 0.5
    elif dt.kind in "iu":
      info = np.iinfo(dt)
      out[code] = rng.integers(info.min, info.max, (2, 3), dtype=dt, endpoint=True)
    else:
      out[code] = rng.standard_normal((2, 3)).astype(dt)
  out["scalar"] = np.array(2.5)
  out["empty"] = np.zeros((0, 4), np.float32)
  out["special"] = np.array([np.nan, np.inf, -0.0, 1e-45], np.float32)  # the format keeps any
  return out


def _assert_bitwise(a: dict, b: dict) -> None:
  assert set(a) == set(b)
  for k in a:
    x, y = np.asarray(a[k]), np.asarray(b[k])
    assert x.dtype == y.dtype and x.shape == y.shape, k
    assert x.tobytes() == y.tobytes(), k


def test_round_trip_is_bitwise_for_every_dtype(tmp_path):
  t = _every_dtype()
  stf.save_safetensors(tmp_path / "t.safetensors", t, {"a": "b", "ü": "é"})
  back, meta = stf.load_safetensors(tmp_path / "t.safetensors")
  _assert_bitwise(t, back)
  assert meta == {"a": "b", "ü": "é"}
  assert all(v.flags.writeable and v.flags.c_contiguous for v in back.values())
  raw = (tmp_path / "t.safetensors").read_bytes()
  (hlen,) = struct.unpack("<Q", raw[:8])
  assert (8 + hlen) % 8 == 0  # padded: every tensor aligned to its item size
  head = stf.read_safetensors_header(tmp_path / "t.safetensors")
  assert all(i.begin % stf.DTYPES[i.dtype].itemsize == 0 for i in head.tensors.values())


def test_no_metadata_and_no_tensors(tmp_path):
  stf.save_safetensors(tmp_path / "e.safetensors", {})
  assert stf.load_safetensors(tmp_path / "e.safetensors") == ({}, {})
  assert b"__metadata__" not in (tmp_path / "e.safetensors").read_bytes()


def test_big_endian_and_strided_inputs_are_written_little_endian_and_contiguous(tmp_path):
  big = np.arange(6, dtype=">f4").reshape(2, 3)
  strided = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]
  stf.save_safetensors(tmp_path / "b.safetensors", {"big": big, "strided": strided.T})
  back, _ = stf.load_safetensors(tmp_path / "b.safetensors")
  assert back["big"].dtype == np.dtype("<f4")
  np.testing.assert_array_equal(back["big"], big)
  np.testing.assert_array_equal(back["strided"], strided.T)


@pytest.mark.parametrize("tensors, meta, match", [
    ({"x": np.zeros(2, np.complex128)}, None, r"x: dtype complex128 has no safetensors code"),
    ({"x": np.array(["a"])}, None, r"x: dtype <U1 has no safetensors code"),
    ({"__metadata__": np.zeros(2)}, None, r"expected a str other than '__metadata__'"),
    ({"x": np.zeros(2)}, {"k": 1}, r"__metadata__: expected str keys and values"),
])
def test_writer_refuses_what_the_format_cannot_hold(tmp_path, tensors, meta, match):
  with pytest.raises(ValueError, match=match):
    stf.save_safetensors(tmp_path / "w.safetensors", tensors, meta)
  assert os.listdir(tmp_path) == []  # nothing written, no temporary file left


# The reference implementation, both ways.

def test_reference_numpy_reads_ours_and_we_read_its(tmp_path):
  sn = pytest.importorskip("safetensors.numpy")
  skip = {"BF16", "F8_E4M3", "F8_E5M2"}  # safetensors.numpy has no ml_dtypes types
  if "C64" not in getattr(sn, "_TYPES", {}):
    skip.add("C64")  # a newer code than older releases of the package read
  t = {k: v for k, v in _every_dtype().items() if k not in skip}
  stf.save_safetensors(tmp_path / "ours.safetensors", t, {"k": "v"})
  _assert_bitwise(t, sn.load_file(str(tmp_path / "ours.safetensors")))
  sn.save_file(t, str(tmp_path / "theirs.safetensors"), metadata={"m": "n"})
  back, meta = stf.load_safetensors(tmp_path / "theirs.safetensors")
  _assert_bitwise(t, back)
  assert meta == {"m": "n"}


def test_reference_torch_reads_ours_and_we_read_its_bfloat16(tmp_path):
  torch = pytest.importorskip("torch")
  st = pytest.importorskip("safetensors.torch")
  bf = np.arange(-4, 4, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 4) / 3
  stf.save_safetensors(tmp_path / "ours.safetensors", {"bf": bf, "f": np.ones(3, np.float32)})
  got = st.load_file(str(tmp_path / "ours.safetensors"))
  assert got["bf"].dtype == torch.bfloat16
  assert got["bf"].view(torch.int16).numpy().tobytes() == bf.tobytes()
  st.save_file({"bf": got["bf"], "h": torch.arange(5, dtype=torch.float16)},
               str(tmp_path / "theirs.safetensors"))
  back, meta = stf.load_safetensors(tmp_path / "theirs.safetensors")
  assert back["bf"].dtype == ml_dtypes.bfloat16 and back["bf"].tobytes() == bf.tobytes()
  np.testing.assert_array_equal(back["h"], np.arange(5, dtype=np.float16))
  assert meta == {}


# Hostile files: every claim of the header is checked before anything is read or allocated.

def _raw(header, data: bytes = b"", hlen: int | None = None) -> bytes:
  text = header if isinstance(header, bytes) else json.dumps(header).encode()
  return struct.pack("<Q", len(text) if hlen is None else hlen) + text + data


def _t(dtype="F32", shape=(2,), offsets=(0, 8)):
  return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


_GOOD = _raw({"__metadata__": {"k": "v"}, "a": _t(), "b": _t("I64", (1,), (8, 16))}, bytes(16))

HOSTILE = [
    ("empty", b"", r"header length: expected an 8-byte little-endian header length, found a "
     r"file of 0 bytes"),
    ("truncated_length", _GOOD[:5], r"header length: expected an 8-byte"),
    ("truncated_header", _GOOD[:40], r"header length: expected a header within the 32 bytes "
     r"after the length, found \d+ bytes claimed \(a truncated file"),
    ("truncated_data", _GOOD[:-3], r"b: expected data_offsets within the 13 bytes after the "
     r"header, found \[8, 16\] \(a truncated file or an offset out of range\)"),
    ("huge_length", struct.pack("<Q", 2 ** 64 - 1) + b"{}",
     r"header length: expected a header of at most 16 MiB .*, found 18446744073709551615 bytes"),
    ("length_over_cap", _raw({}, hlen=stf.MAX_HEADER_BYTES + 1),
     r"header length: expected a header of at most"),
    ("bad_json", _raw(b"{\"a\": [1, 2"), r"header: expected UTF-8 JSON text, found "
     r"JSONDecodeError"),
    ("not_utf8", _raw(b"{\"\xff\": 1}"), r"header: expected UTF-8 JSON text, found "
     r"UnicodeDecodeError"),
    ("not_an_object", _raw(b"[1, 2]"), r"header: expected a JSON object starting with '\{'"),
    ("leading_space", _raw(b" {}"), r"header: expected a JSON object starting with '\{'"),
    ("nan_constant", _raw(b"{\"a\": NaN}"), r"header: expected UTF-8 JSON text, found "
     r"ValueError: NaN is not JSON"),
    ("deep_nesting", _raw(b"{\"a\":" + b"[" * 100000 + b"]" * 100000 + b"}"),
     r"header: expected UTF-8 JSON text, found RecursionError"),
    ("duplicate_name", _raw(b"{\"a\": " + json.dumps(_t()).encode() + b", \"a\": "
                            + json.dumps(_t()).encode() + b"}", bytes(8)),
     r"header: expected JSON objects whose keys are unique, found the key 'a' twice"),
    ("bad_dtype", _raw({"a": _t("C128")}, bytes(8)), r"a: expected a dtype of BOOL, .*, found "
     r"'C128'"),
    ("sub_byte_dtype", _raw({"a": _t("F4")}, bytes(8)), r"a: expected a dtype of .*found 'F4'"),
    ("dtype_not_str", _raw({"a": _t(4)}, bytes(8)), r"a: expected a dtype of .*found '4'"),
    ("negative_dim", _raw({"a": _t(shape=(-2,))}, bytes(8)), r"a: expected a shape of at most "
     r"32 non-negative ints, found '\[-2\]'"),
    ("float_dim", _raw({"a": _t(shape=(2.0,))}, bytes(8)), r"a: expected a shape .*found "
     r"'\[2\.0\]'"),
    ("bool_dim", _raw({"a": _t(shape=(True, 2))}, bytes(8)), r"a: expected a shape .*found "
     r"'\[true, 2\]'"),
    ("too_many_dims", _raw({"a": _t(shape=(1,) * 33, offsets=(0, 4))}, bytes(4)),
     r"a: expected a shape of at most 32"),
    ("shape_mismatch", _raw({"a": _t(shape=(3,))}, bytes(8)), r"a: expected 12 bytes for shape "
     r"\(3,\) F32, found data_offsets \[0, 8\] \(8 bytes\)"),
    ("huge_shape", _raw({"a": _t(shape=(2 ** 40, 2 ** 20), offsets=(0, 2 ** 62))}, bytes(8)),
     r"a: expected data_offsets within the 8 bytes after the header, found \[0, "
     r"4611686018427387904\]"),
    ("begin_after_end", _raw({"a": _t(offsets=(8, 0))}, bytes(8)),
     r"a: expected data_offsets with begin <= end, found \[8, 0\]"),
    ("offsets_out_of_range", _raw({"a": _t(offsets=(8, 16))}, bytes(8)),
     r"a: expected data_offsets within the 8 bytes after the header, found \[8, 16\]"),
    ("negative_offset", _raw({"a": _t(offsets=(-8, 0))}, bytes(8)),
     r"a: expected data_offsets \[begin, end\] of two non-negative ints, found '\[-8, 0\]'"),
    ("three_offsets", _raw({"a": _t(offsets=(0, 4, 8))}, bytes(8)),
     r"a: expected data_offsets \[begin, end\] of two non-negative ints"),
    ("overlap", _raw({"a": _t(), "b": _t(offsets=(4, 12))}, bytes(12)),
     r"b: expected data starting at byte 8, where 'a' ends, found data_offsets \[4, 12\] "
     r"overlapping it"),
    ("same_bytes_twice", _raw({"a": _t(), "b": _t()}, bytes(8)),
     r"[ab]: expected data starting at byte 8, where '[ab]' ends, found data_offsets \[0, 8\] "
     r"overlapping it"),
    ("gap", _raw({"a": _t(), "b": _t(offsets=(12, 20))}, bytes(20)),
     r"b: expected data starting at byte 8 \(the buffer is indexed without gaps\), found "
     r"data_offsets \[12, 20\], leaving 4 bytes unindexed"),
    ("not_from_zero", _raw({"a": _t(offsets=(4, 12))}, bytes(12)),
     r"a: expected data starting at byte 0"),
    ("extra_bytes", _GOOD + b"PK\x03\x04 a polyglot tail",
     r"data: expected 16 bytes after the header, as the tensors index, found 36 bytes \(20 "
     r"unindexed at the end\)"),
    ("entry_not_object", _raw({"a": [1, 2]}), r"a: expected a JSON object \{dtype, shape, "
     r"data_offsets\}, found list"),
    ("missing_key", _raw({"a": {"dtype": "F32", "shape": [0]}}),
     r"a: expected exactly the keys dtype, shape, data_offsets, found keys 'dtype', 'shape'"),
    ("extra_key", _raw({"a": {**_t(), "x": 1}}, bytes(8)), r"a: expected exactly the keys"),
    ("metadata_not_object", _raw({"__metadata__": ["x"]}), r"__metadata__: expected a JSON "
     r"object of strings, found list"),
    ("metadata_not_string", _raw({"__metadata__": {"heads": 4}}),
     r"__metadata__\.heads: expected a string, found int"),
    ("control_chars_in_name", _raw({"a\nerror: forged": _t("X")}, bytes(8)),
     r"a\\nerror: forged: expected a dtype"),
]


@pytest.mark.parametrize("name, raw, match", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files_are_one_line_input_errors(tmp_path, name, raw, match):
  path = tmp_path / f"{name}.safetensors"
  path.write_bytes(raw)
  for read in (stf.load_safetensors, stf.read_safetensors_header):
    with pytest.raises(InputError) as e:
      read(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    assert msg.count(": expected ") == 1, msg
    assert re.search(match, msg), msg


def test_the_well_formed_hostile_baseline_loads(tmp_path):
  # The files above are this one with one thing broken: it must load, or they prove nothing.
  (tmp_path / "good.safetensors").write_bytes(_GOOD)
  t, meta = stf.load_safetensors(tmp_path / "good.safetensors")
  assert meta == {"k": "v"} and t["a"].shape == (2,) and t["b"].dtype == np.int64


def test_null_metadata_is_none(tmp_path):
  (tmp_path / "n.safetensors").write_bytes(_raw({"__metadata__": None, "a": _t()}, bytes(8)))
  t, meta = stf.load_safetensors(tmp_path / "n.safetensors")
  assert meta == {} and list(t) == ["a"]


def test_non_boolean_bytes_are_true(tmp_path):
  (tmp_path / "b.safetensors").write_bytes(_raw({"b": _t("BOOL", (3,), (0, 3))}, b"\x00\x02\xff"))
  t, _ = stf.load_safetensors(tmp_path / "b.safetensors")
  np.testing.assert_array_equal(t["b"], [False, True, True])


def test_special_files_are_refused_without_blocking(tmp_path):
  fifo = tmp_path / "p.safetensors"
  os.mkfifo(fifo)
  with pytest.raises(InputError, match=r"p\.safetensors: file: expected a regular file, found a "
                     r"FIFO"):
    stf.load_safetensors(fifo)
  with pytest.raises(InputError, match=r"no\.safetensors: file: expected a readable "
                     r"\.safetensors file"):
    stf.load_safetensors(tmp_path / "no.safetensors")
