"""Every test process sees 8 fake CPU devices, so sharded code is tested without hardware.

Must run before JAX initialises its backends; single-device code still runs on device 0.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

# Shared test helpers (hostile_cli) live beside this file; the tests sit in subfolders.
sys.path.insert(0, str(pathlib.Path(__file__).parent))

DATA = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  return DATA
