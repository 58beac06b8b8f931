"""Conventions the whole package keeps, checked from the source: one logger name, and no library
module that changes matplotlib's global state."""

import pathlib
import re

import csa_jax

PKG = pathlib.Path(csa_jax.__file__).parent


def _sources():
  return {p: p.read_text() for p in PKG.rglob("*.py")}


def test_every_module_logger_is_named_log():
  bad = [f"{p.relative_to(PKG)}: {m.group(0)}" for p, s in _sources().items()
         for m in re.finditer(r"^(\w+) = logging\.getLogger\(.*\)$", s, re.M)
         if m.group(1) != "log"]
  assert bad == []


def test_no_module_sets_the_matplotlib_backend_or_uses_pyplot():
  bad = [str(p.relative_to(PKG)) for p, s in _sources().items()
         if re.search(r"matplotlib\.use\(|import matplotlib\.pyplot|from matplotlib import pyplot",
                      s)]
  assert bad == []
