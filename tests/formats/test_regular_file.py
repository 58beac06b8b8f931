"""Every reader of a user's file: regular files only, never blocking, bounded before reading.

In process and fast; ``tests/cli/test_hostile_files.py`` runs the same files through the CLI.
A FIFO that a reader opened the ordinary way would block the test forever, so each call runs
under ``SIGALRM``: a hang fails the case in a few seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import stat

import numpy as np
import pytest

from csa_jax.data import annotations, descriptors, ground_truth, large_descriptors
from csa_jax.data.index_lists import as_names, load_names
from csa_jax.errors import InputError
from csa_jax.formats import containers, npyio, regular_file
from csa_jax.formats.containers import load_json
from csa_jax.formats.safe_pickle import load_data
from csa_jax.formats.torch_file import read_torch_file
from csa_jax.interop.export import load_model


@contextlib.contextmanager
def deadline(seconds: int = 5):
  def _hang(signum, frame):
    raise TimeoutError(f"still blocked after {seconds} s")
  old = signal.signal(signal.SIGALRM, _hang)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def specials(tmp_path):
  """{kind: path} of files no reader may read: a FIFO, /dev/zero via a symlink, a directory."""
  os.mkfifo(tmp_path / "fifo.npy")
  os.symlink("/dev/zero", tmp_path / "zero.json")
  (tmp_path / "dir.npz").mkdir()
  return {"a FIFO": tmp_path / "fifo.npy", "a character device": tmp_path / "zero.json",
          "a directory": tmp_path / "dir.npz"}


READERS = {
    "file_format": containers.file_format,
    "load_container": containers.load_container,
    "load_npy": npyio.load_npy,
    "load_npz": npyio.load_npz,
    "load_data": load_data,
    "load_json": load_json,
    "load_names": lambda p: load_names(p, 3, "imlist"),
    "load_gnd": ground_truth.load_gnd,
    "load_annotations": annotations.load_annotations,
    "load_descriptors": descriptors.load_descriptors,
    "load_large": large_descriptors.load_large,
    "read_torch_file": read_torch_file,
    "load_model": load_model,
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_refuses_special_files_at_once(specials, reader):
  for kind, path in specials.items():
    if reader == "load_model" and kind == "a directory":
      continue  # a directory is a training workdir to load_model (tested in test_export)
    with deadline(), pytest.raises(InputError) as e:
      READERS[reader](path)
    assert str(e.value) == f"{path}: file: expected a regular file, found {kind}" + \
        (" (named pipe)" if kind == "a FIFO" else ""), reader


def test_open_regular_returns_a_blocking_file_and_its_size(tmp_path):
  (tmp_path / "a.bin").write_bytes(b"abcdef")
  f, size = regular_file.open_regular(tmp_path / "a.bin")
  with f:
    assert size == 6 and f.read() == b"abcdef"
    assert os.get_blocking(f.fileno())  # O_NONBLOCK was only for the open
  os.symlink(tmp_path / "a.bin", tmp_path / "link")
  assert regular_file.check_regular(tmp_path / "link") == 6  # symlinks to files are fine
  with pytest.raises(InputError, match=r"nope: file: expected a readable x, found No such file"):
    regular_file.open_regular(tmp_path / "nope", "a readable x")


def test_open_regular_closes_what_it_refuses(specials):
  before = len(os.listdir("/proc/self/fd"))
  for path in specials.values():
    with pytest.raises(InputError):
      regular_file.open_regular(path)
  assert len(os.listdir("/proc/self/fd")) == before


def test_kind_of_names_every_special_kind():
  assert regular_file.kind_of(stat.S_IFSOCK) == "a socket"
  assert regular_file.kind_of(stat.S_IFBLK) == "a block device"
  assert regular_file.kind_of(stat.S_IFREG) == "a regular file"


@pytest.mark.parametrize("reader", ["load_names", "load_json", "load_gnd", "load_annotations"])
def test_huge_text_files_are_refused_from_their_size(tmp_path, reader):
  path = tmp_path / "huge.json"
  with open(path, "wb") as f:  # sparse: 100 GB claimed, nothing on disk
    f.write(b'{"imlist": [')
    f.truncate(100 << 30)
  with deadline(2), pytest.raises(InputError, match=re.escape(
      f"{path}: file: expected a file of at most 1 GiB (1073741824 bytes), found 100 GiB")):
    READERS[reader](path)


def test_read_regular_reads_no_more_than_the_limit(tmp_path):
  (tmp_path / "t.txt").write_bytes(b"x" * 100)
  assert regular_file.read_regular(tmp_path / "t.txt", max_bytes=100) == b"x" * 100
  with pytest.raises(InputError, match="expected a file of at most 99 bytes, found 100 bytes"):
    regular_file.read_regular(tmp_path / "t.txt", max_bytes=99)


# ----------------------------------------------------------------------------------------------
# Names: one per "\n" line, valid Unicode, no control characters.


def test_unicode_line_separators_stay_inside_a_name(tmp_path):
  names = ["a\u2028b", "c\u2029d", "e\u00a0f", "g h"]
  (tmp_path / "n.txt").write_text("\r\n".join(names) + "\r\n", encoding="utf-8")
  assert load_names(tmp_path / "n.txt", 4, "imlist") == names
  (tmp_path / "bom.txt").write_bytes("\ufeffx\ny\n".encode())
  assert load_names(tmp_path / "bom.txt", 2, "imlist") == ["x", "y"]


@pytest.mark.parametrize("content, field, found", [
    ('["ok", "\\ud800"]', "imlist[1]", "a lone surrogate U+D800 at character 0"),
    ('["ok", "x\\u001b[31m"]', "imlist[1]", "U+001B at character 1"),
    ('{"imlist": ["a\\u0085b", "c"]}', "imlist[0]", "U+0085 at character 1"),
])
def test_unwritable_names_are_refused_naming_the_index(tmp_path, content, field, found):
  (tmp_path / "n.json").write_text(content)
  with pytest.raises(InputError, match=re.escape(f"n.json: {field}: expected a name") + ".*" +
                     re.escape(f"found {found}")):
    load_names(tmp_path / "n.json", 2, "imlist")


def test_control_characters_in_text_names_are_refused(tmp_path):
  (tmp_path / "n.txt").write_text("a\nb\x00c\n")
  with pytest.raises(InputError, match=re.escape("n.txt: imlist[1]: expected a name without "
                                                 "control characters, found U+0000")):
    load_names(tmp_path / "n.txt", 2, "imlist")
  assert as_names(np.array(["ok", "\u2028"]), "s", "f") == ["ok", "\u2028"]


def test_names_json_roundtrips_to_utf8(tmp_path):
  names = ["é", "日本", "a\u2028b"]
  (tmp_path / "n.json").write_text(json.dumps(names))
  got = load_names(tmp_path / "n.json", 3, "qimlist")
  assert got == names and json.dumps(got, ensure_ascii=False).encode("utf-8")


# ----------------------------------------------------------------------------------------------
# Descriptors: the wrong width said right; an all-zero memmap refused at its first block.


def _unit(n, c, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, c)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("shape, kw, want", [
    ((20, 128), {"dim": 64}, "(Q, 64) or (64, Q) descriptors, found shape (20, 128)"),
    ((128, 20), {"dim": 64}, "(Q, 64) or (64, Q) descriptors, found shape (128, 20)"),
    ((20, 64), {"dim": 128}, "(Q, 128) or (128, Q) descriptors, found shape (20, 64)"),
    ((64, 20), {"dim": 128}, "(Q, 128) or (128, Q) descriptors, found shape (64, 20)"),
    ((64, 30), {"dim": 64, "n": 64}, "(64, 64) or (64, 64) descriptors, found C=30 (shape "
                                     "(64, 30))"),
    ((3, 6), {"dim": 8, "n": 3}, "(3, 8) or (8, 3) descriptors, found C=6 (shape (3, 6))"),
    ((30, 64), {"dim": 64, "n": 30}, None),
    ((64, 30), {"dim": 64, "n": 30}, None),
])
def test_wrong_width_message_for_every_orientation(shape, kw, want):
  x = _unit(*shape)
  if want is None:
    got = descriptors.as_descriptors(x, "q.npy", "query", **kw)
    assert got.shape == (30, 64)
    return
  with pytest.raises(InputError) as e:
    descriptors.as_descriptors(x, "q.npy", "query", **kw)
  assert str(e.value) == (f"q.npy: query: expected descriptor size C={kw['dim']} (the "
                          f"database's): {want}")


def test_wrong_width_of_other_sets_names_n(tmp_path):
  with pytest.raises(InputError, match=re.escape(
      "r: db: expected descriptor size C=8 (as the other descriptors): (N, 8) or (8, N) "
      "descriptors, found shape (30, 9)")):
    descriptors.as_descriptors(_unit(30, 9), "r", "db", dim=8)


def test_zero_rows_stop_the_scan_at_their_block(tmp_path, monkeypatch):
  x = _unit(1000, 8)
  x[537] = 0
  x[900] = np.nan  # after the zero row: never reached
  np.save(tmp_path / "r.npy", x)
  mm = npyio.load_npy(tmp_path / "r.npy", mmap=True)
  with pytest.raises(InputError, match=re.escape(
      "r.npy: r1m: expected non-zero descriptors, found an all-zero row 537 (of 1000)")):
    large_descriptors.scan_rows(str(tmp_path / "r.npy"), mm.offset, mm.shape, "r1m", block_rows=100)
  reads = []
  real = large_descriptors.open_regular

  def counting(*a, **k):
    f, size = real(*a, **k)
    reads.append(f)
    return f, size
  monkeypatch.setattr(large_descriptors, "open_regular", counting)
  monkeypatch.setattr(descriptors, "BLOCK_BYTES", 8 * 8 * 100)  # 100 rows a block
  with pytest.raises(InputError, match="all-zero row 537"):
    large_descriptors.load_large(tmp_path / "r.npy", field="db")
  assert len(reads) == 1  # refused by the scan: the file was not read again to re-normalise


def test_non_unit_memmap_is_renormalised_from_the_scan(tmp_path, caplog):
  x = _unit(500, 8)
  np.save(tmp_path / "r.npy", x * 3)
  got = large_descriptors.load_large(tmp_path / "r.npy", field="db")
  assert type(got) is np.ndarray and got.dtype == np.float32
  np.testing.assert_allclose(got, x, atol=1e-6)
  warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert len(warned) == 1 and "not L2-normalised (norms 3..3)" in warned[0]


def test_read_into_loops_over_short_reads_and_stops_at_the_end():
  class Trickle(io.BytesIO):
    """A file whose readinto returns at most 3 bytes a call, as a pipe or a signal may."""

    def readinto(self, b):
      with memoryview(b) as m:
        return super().readinto(m[:3])

  data = bytes(range(20))
  buf = np.zeros(5, np.float32)  # 20 bytes
  assert regular_file.read_into(Trickle(data), buf) == 20
  assert buf.tobytes() == data
  short = bytearray(32)
  assert regular_file.read_into(Trickle(data), short) == 20  # the file ended first
  assert bytes(short[:20]) == data and bytes(short[20:]) == bytes(12)
