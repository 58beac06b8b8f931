"""Configs as Python files with typed command-line overrides.

A config is ``configs/<name>.py`` defining ``get_config() -> ConfigDict``. The command line
overrides any leaf with ``--config.a.b=value``; the value is parsed to the leaf's type (the type
of its default, or the type given to ``placeholder``), and an unknown key or a value of the wrong
type is an ``InputError`` naming the key. No ml_collections: a nested dict with attribute access,
per-leaf types and a freeze switch is all training needs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Iterable

from csa_jax.errors import InputError

_SCALARS = (bool, int, float, str)


class _Placeholder:
  """A leaf whose default is None but whose type is known (e.g. an optional path)."""

  def __init__(self, type_: type):
    if type_ not in _SCALARS:
      raise TypeError(f"placeholder type must be one of {_SCALARS}, got {type_}")
    self.type = type_


def placeholder(type_: type) -> _Placeholder:
  """A None-valued leaf that overrides may set to a ``type_`` value (or back to None)."""
  return _Placeholder(type_)


class ConfigDict:
  """A nested mapping with attribute access; each leaf keeps the type it was created with.

  Assigning a new key is allowed until ``freeze()``; after it, nothing changes. Values: bool,
  int, float, str, None, tuples/lists of scalars, or nested ``ConfigDict`` / dict.
  """

  def __init__(self, initial: dict | None = None, **kw):
    object.__setattr__(self, "_items", {})
    object.__setattr__(self, "_types", {})
    object.__setattr__(self, "_nullable", set())
    object.__setattr__(self, "_frozen", False)
    for k, v in {**(initial or {}), **kw}.items():
      self[k] = v

  # -- mapping protocol ---------------------------------------------------------------------
  def __getitem__(self, key: str):
    return self._items[key]

  def __setitem__(self, key: str, value: Any):
    if self._frozen:
      raise AttributeError(f"config is frozen; cannot set {key!r}")
    if not isinstance(key, str) or not key.isidentifier():
      raise KeyError(f"config keys must be identifiers, got {key!r}")
    if isinstance(value, _Placeholder):
      self._types[key] = value.type
      self._nullable.add(key)
      value = None
    elif isinstance(value, dict):
      value = ConfigDict(value)
    elif isinstance(value, list):
      value = tuple(value)
    if isinstance(value, tuple) and not all(isinstance(x, _SCALARS) for x in value):
      raise TypeError(f"config {key!r}: sequences hold only bool/int/float/str, got {value!r}")
    if value is not None and not isinstance(value, _SCALARS + (tuple, ConfigDict)):
      raise TypeError(f"config {key!r}: unsupported value type {type(value).__name__}")
    if value is None:
      self._nullable.add(key)
    elif key not in self._types:
      self._types[key] = type(value)
    self._items[key] = value

  def __getattr__(self, key: str):
    if key.startswith("_"):  # private and dunder lookups (copy, pickle) never mean a config key
      raise AttributeError(key)
    try:
      return self._items[key]
    except KeyError:
      raise AttributeError(f"config has no key {key!r} (keys: {sorted(self._items)})") from None

  def __setattr__(self, key: str, value: Any):
    self[key] = value

  def __contains__(self, key) -> bool:
    return key in self._items

  def __iter__(self):
    return iter(self._items)

  def __len__(self) -> int:
    return len(self._items)

  def keys(self):
    return self._items.keys()

  def items(self):
    return self._items.items()

  def get(self, key: str, default=None):
    return self._items.get(key, default)

  def __eq__(self, other) -> bool:
    return isinstance(other, ConfigDict) and self.to_dict() == other.to_dict()

  def __repr__(self) -> str:
    return f"ConfigDict({json.dumps(self.to_dict(), indent=2)})"

  # -- helpers -------------------------------------------------------------------------------
  def freeze(self) -> "ConfigDict":
    """Makes this dict and every nested one read-only; returns self."""
    for v in self._items.values():
      if isinstance(v, ConfigDict):
        v.freeze()
    object.__setattr__(self, "_frozen", True)
    return self

  @property
  def frozen(self) -> bool:
    return self._frozen

  def type_of(self, key: str) -> type | None:
    """The leaf's declared type (None for an untyped None default)."""
    return self._types.get(key)

  def to_dict(self) -> dict:
    """Plain nested dicts, JSON-serialisable (tuples become lists)."""
    out = {}
    for k, v in self._items.items():
      if isinstance(v, ConfigDict):
        v = v.to_dict()
      elif isinstance(v, tuple):
        v = list(v)
      out[k] = v
    return out

  def copy(self) -> "ConfigDict":
    """An unfrozen deep copy that keeps every leaf's type."""
    new = ConfigDict()
    for k, v in self._items.items():
      new._items[k] = v.copy() if isinstance(v, ConfigDict) else v
    new._types.update(self._types)
    new._nullable.update(self._nullable)
    return new


# -- parsing -----------------------------------------------------------------------------------
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_scalar(text: str, type_: type, key: str, source: str):
  t = text.strip()
  try:
    if type_ is bool:
      if t.lower() in _TRUE:
        return True
      if t.lower() in _FALSE:
        return False
      raise ValueError
    if type_ is int:
      return int(t)
    if type_ is float:
      return float(t)
    return text
  except ValueError:
    raise InputError(f"{source}: {key}: expected {type_.__name__}, found {text!r}") from None


def _parse_tuple(text: str, default: tuple, key: str, source: str) -> tuple:
  t = text.strip()
  if t.startswith(("(", "[")):
    try:
      items = ast.literal_eval(t)
    except (ValueError, SyntaxError):
      raise InputError(f"{source}: {key}: expected a tuple literal, found {text!r}") from None
    if not isinstance(items, (tuple, list)):
      raise InputError(f"{source}: {key}: expected a tuple, found {text!r}")
    items = [str(x) for x in items] if not default else list(items)
  else:
    items = [x for x in t.split(",") if x.strip()] if t else []
  if not default:
    return tuple(items)
  elem_type = type(default[0])
  out = []
  for x in items:
    if isinstance(x, str):
      out.append(_parse_scalar(x, elem_type, key, source))
    elif elem_type is float and isinstance(x, int) and not isinstance(x, bool):
      out.append(float(x))
    elif type(x) is elem_type:
      out.append(x)
    else:
      raise InputError(f"{source}: {key}: expected a tuple of {elem_type.__name__}, found "
                       f"{text!r}")
  return tuple(out)


def _parse_untyped(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def set_override(config: ConfigDict, dotted: str, text: str, source: str = "--config") -> None:
  """Sets ``config.<dotted>`` from command-line ``text``, parsed to the leaf's type."""
  node, parts = config, dotted.split(".")
  full = f"config.{dotted}"
  for i, part in enumerate(parts):
    if not isinstance(node, ConfigDict) or part not in node:
      where = "config." + ".".join(parts[:i]) if i else "the config"
      known = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else "none"
      raise InputError(f"{source}: {full}: expected a key of {where} ({known}), found unknown "
                       f"key {part!r}")
    if i < len(parts) - 1:
      node = node[part]
  key = parts[-1]
  current, type_ = node[key], node.type_of(key)
  if isinstance(current, ConfigDict):
    raise InputError(f"{source}: {full}: expected a leaf value, found a group "
                     f"(set one of {', '.join(sorted(current.keys()))})")
  if key in node._nullable and text.strip() in ("None", "none", "null"):
    value = None
  elif type_ is None:
    value = _parse_untyped(text)
  elif type_ is tuple:
    value = _parse_tuple(text, current or (), full, source)
  else:
    value = _parse_scalar(text, type_, full, source)
  node._items[key] = value  # the leaf's type stays what the config file declared


def load_config_file(path: str) -> ConfigDict:
  """Executes ``path`` and returns its ``get_config()`` (unfrozen)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(f"{path}: file: expected a config file (configs/<name>.py), found no such "
                     "file")
  name = "_csa_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise InputError(f"{path}: line {e.lineno}: expected a Python config file, found a syntax "
                     f"error ({e.msg})") from None
  except Exception as e:  # a config file is the user's code: any failure is their input's
    raise InputError(f"{path}: file: expected a config file that runs, found "
                     f"{type(e).__name__}: {e}") from None
  if not callable(getattr(module, "get_config", None)):
    raise InputError(f"{path}: get_config: expected a function returning the config, found none")
  try:
    config = module.get_config()
  except Exception as e:
    raise InputError(f"{path}: get_config: expected it to return the config, found "
                     f"{type(e).__name__}: {e}") from None
  if isinstance(config, dict):
    config = ConfigDict(config)
  if not isinstance(config, ConfigDict):
    raise InputError(f"{path}: get_config(): expected a ConfigDict, found "
                     f"{type(config).__name__}")
  return config


def load_config(path: str, overrides: Iterable[tuple[str, str]] = ()) -> ConfigDict:
  """The config of ``path`` with ``(dotted key, text)`` overrides applied, frozen."""
  config = load_config_file(path)
  for key, text in overrides:
    set_override(config, key, text)
  return config.freeze()


def split_config_flags(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
  """Pulls ``--config PATH`` and ``--config.a.b=value`` (or ``--config.a.b value``) out of argv.

  Returns (config path or None, [(dotted key, text)], the remaining arguments).
  """
  path, overrides, rest = None, [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg == "--config" or arg.startswith("--config="):
      if "=" in arg:
        path = arg.split("=", 1)[1]
      elif i + 1 < len(argv):
        path, i = argv[i + 1], i + 1
      else:
        raise InputError("command line: --config: expected a config file path, found nothing")
    elif arg.startswith("--config."):
      body = arg[len("--config."):]
      if "=" in body:
        key, text = body.split("=", 1)
      elif i + 1 < len(argv):
        key, text, i = body, argv[i + 1], i + 1
      else:
        raise InputError(f"command line: {arg}: expected a value, found nothing")
      if not key:
        raise InputError(f"command line: {arg}: expected --config.<key>=<value>, found no key")
      overrides.append((key, text))
    else:
      rest.append(arg)
    i += 1
  return path, overrides, rest
