"""Provenance records: complete, plain JSON, no hostname."""

import dataclasses
import datetime
import json
import shlex
import socket

import jax
import ml_collections
import numpy as np

import csa_jax
from csa_jax import run_info as ri


def test_run_info_fields():
  argv = ["csa-jax", "eval", "--features", "my file.npz", "--K", "8"]
  r = ri.run_info(argv, config={"K": 8}, seed=np.int64(3))
  assert set(r) == {"versions", "devices", "time_utc", "command", "seed", "config", "env"}
  v = r["versions"]
  assert v["csa_jax"] == csa_jax.__version__ and v["jax"] == jax.__version__
  assert v["numpy"] == np.__version__
  assert set(v) == {"csa_jax", "python", "jax", "jaxlib", "flax", "optax", "orbax", "numpy",
                    "torch"}
  d = r["devices"]
  assert d["backend"] == jax.default_backend() and d["device_count"] == jax.device_count()
  assert d["process_count"] == 1 and d["device_kinds"]
  assert shlex.split(r["command"]) == argv  # pasteable back
  assert r["seed"] == 3 and r["config"] == {"K": 8}
  t = datetime.datetime.fromisoformat(r["time_utc"].replace("Z", "+00:00"))
  assert t.utcoffset() == datetime.timedelta(0)
  text = json.dumps(r, allow_nan=False)  # strict JSON
  host = socket.gethostname()
  assert len(host) < 4 or host not in text


def test_absent_library_is_none(monkeypatch):
  real = ri.package_version
  monkeypatch.setattr(ri, "package_version", lambda d: None if d == "torch" else real(d))
  assert ri.versions()["torch"] is None
  assert ri.package_version("surely-not-a-package-csa") is None


def test_plain_config():
  @dataclasses.dataclass
  class Cfg:
    a: tuple = (1, 2)
    b: float = float("nan")

  cd = ml_collections.ConfigDict({"train": {"lr": 0.1, "sizes": (1, 2)}})
  got = ri.plain({"cfg": Cfg(), "cd": cd, "arr": np.arange(3), "f": np.float32(0.5),
                  1: {"x"}, "obj": object})
  assert got == {"cfg": {"a": [1, 2], "b": None}, "cd": {"train": {"lr": 0.1, "sizes": [1, 2]}},
                 "arr": [0, 1, 2], "f": 0.5, "1": ["x"], "obj": str(object)}
  json.dumps(got, allow_nan=False)


def test_version_lines():
  lines = ri.version_lines().splitlines()
  assert len(lines) == 2
  assert lines[0].startswith(f"csa-jax {csa_jax.__version__} (python ")
  for lib in ("jax", "jaxlib", "flax", "optax", "numpy"):
    assert f" {lib} " in lines[0]
  assert lines[1].startswith(f"backend {jax.default_backend()}: {jax.device_count()} device")
