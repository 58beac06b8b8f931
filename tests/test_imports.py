"""The package's import graph: no module imports itself back, subpackages import one way.

Read from the source (every ``import`` statement, also the ones inside functions, which only
postpone a dependency), so a cycle fails here before it fails a user at import time.
"""

import ast
import pathlib

import csa_jax

PKG = pathlib.Path(csa_jax.__file__).parent


# The top-level configs/ folder is installed as csa_jax.configs (pyproject's package-dir).
CONFIGS = PKG.parent / "configs"


def _module_name(path: pathlib.Path) -> str:
  if path.is_relative_to(PKG):
    parts = ("csa_jax",) + path.relative_to(PKG).with_suffix("").parts
  else:
    parts = ("csa_jax", "configs") + path.relative_to(CONFIGS).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """{module: the csa_jax modules it imports}, from every ``import`` in its source."""
  paths = list(PKG.rglob("*.py")) + (list(CONFIGS.rglob("*.py")) if CONFIGS.is_dir() else [])
  files = {_module_name(p): p for p in paths}
  graph = {}
  for name, path in files.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        # ``from pkg import mod`` imports the module pkg.mod when there is one.
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files
                   else node.module for a in node.names]
      else:
        continue
      deps.update(t for t in targets if t.startswith("csa_jax") and t in files and t != name)
    graph[name] = deps
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle per strongly connected component with more than one node (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _subpackage(module: str) -> str:
  """csa_jax.formats.npyio -> csa_jax.data; a top-level module (csa_jax.errors) is its own node."""
  return ".".join(module.split(".")[:2])


def test_no_module_imports_itself_back():
  assert _cycles(import_graph()) == []


def test_subpackages_import_one_way():
  graph = import_graph()
  sub = {}
  for m, deps in graph.items():
    sub.setdefault(_subpackage(m), set()).update(_subpackage(d) for d in deps)
  for k in sub:
    sub[k].discard(k)
  assert _cycles(sub) == []


def test_the_walk_finds_a_planted_cycle():
  g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(g) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []
