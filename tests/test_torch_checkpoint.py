"""Reading real torch.save files without torch, and refusing malicious ones."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from csa_jax import InputError, load_torch_checkpoint, rerank_scores
from csa_jax.torch_checkpoint import read_torch_file


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
