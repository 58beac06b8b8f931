"""The tfds extra where its pieces are missing: one line naming what to install (or why it
cannot be), and array_record required only where it has wheels."""

import pathlib
import sys
import tomllib
import types

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from csa_jax.data import tfds_builder
from csa_jax.errors import InputError

PYPROJECT = pathlib.Path(__file__).parents[2] / "pyproject.toml"


def test_missing_tensorflow_datasets_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
  with pytest.raises(InputError, match=r"^tensorflow_datasets: import: expected the optional "
                     r"extra 'tfds' \(pip install 'csa_jax\[tfds\]'\)"):
    tfds_builder.import_tfds()


def test_missing_array_record_says_where_it_has_wheels(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.ModuleType("tensorflow_datasets"))
  monkeypatch.setitem(sys.modules, "array_record", None)
  with pytest.raises(InputError) as e:
    tfds_builder.import_tfds()
  msg = str(e.value)
  assert msg.startswith("array_record: import: expected the ArrayRecord package")
  assert "Linux and Apple-silicon macOS only" in msg and "\n" not in msg


@pytest.mark.parametrize("platform, machine, wanted", [
    ("linux", "x86_64", True), ("linux", "aarch64", True), ("darwin", "arm64", True),
    ("darwin", "x86_64", False), ("win32", "AMD64", False)])
def test_tfds_extra_asks_for_array_record_only_where_it_has_wheels(platform, machine, wanted):
  extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["tfds"]
  reqs = {r.name.replace("-", "_"): r for r in map(Requirement, extra)}
  assert reqs["tensorflow_datasets"].marker is None  # TFDS itself installs everywhere
  marker = reqs["array_record"].marker or Marker("python_version > '0'")
  assert marker.evaluate({"sys_platform": platform, "platform_machine": machine}) is wanted
