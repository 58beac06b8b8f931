"""Every test process sees 8 fake CPU devices, so sharded code is tested without hardware.

Must run before JAX initialises its backends; single-device code still runs on device 0.

Two tiers. Everything (README, CI): ``python -m pytest -q``. The fast tier, about 3 minutes on
2 cores: ``python -m pytest -q -m "not slow"``: the parity tests against the original, the
re-ranking and evaluation equivalences and one CLI smoke per command. ``-m slow`` runs the rest:
the subprocess matrices (tests/cli/test_hostile_*.py), the 8-device sharded repeats and the
long cases (multi-process training, kill -9 and resume, TFDS round trips, bench curves and races,
every experiment beyond the first).
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI keeps compiled programs in ~/.cache by default; tests leave the user's cache alone
# (tests/test_compile_cache.py turns it on in a folder of its own).
os.environ.setdefault("CSA_JAX_CACHE_DIR", "off")

import io  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

# Shared test helpers (hostile_cli) live beside this file; the tests sit in subfolders.
sys.path.insert(0, str(pathlib.Path(__file__).parent))

DATA = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  return DATA


@pytest.fixture
def shown():
  """The csa_jax log lines as the CLI shows them (INFO and above), as a StringIO."""
  from csa_jax import log  # noqa: PLC0415  (after XLA_FLAGS is set above)
  logger = logging.getLogger(log.ROOT)
  handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
  stream = io.StringIO()
  log.setup(logging.INFO, stream)
  yield stream
  logger.handlers[:] = handlers
  logger.setLevel(level)
  logger.propagate = propagate
