"""pyproject.toml lists its packages by hand: every subpackage of csa_jax must be in the list, or
a non-editable install ships without it."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_subpackage_is_shipped():
  listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
               ["packages"])
  found = {".".join(p.parent.relative_to(ROOT).parts)
           for p in (ROOT / "csa_jax").rglob("__init__.py")} | {"csa_jax.configs"}
  assert found - listed == set()
  assert listed - found == set()
