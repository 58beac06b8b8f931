"""Training configs, shipped with csa_jax as ``csa_jax.configs``, and how they are loaded.

Each ``<name>.py`` here defines ``get_config() -> ml_collections.ConfigDict``. ``load`` accepts a
shipped name (``tiny``) or the path of any such file, then applies command-line overrides
``--config.a.b=value``: the text is parsed to the type of the leaf it replaces (the type of its
default, or the type given to ``placeholder``), so ``--config.train.epochs=abc`` or an unknown key
is one ``InputError`` line naming the key. The result is locked: no key can be added by mistake.
``tiny_overrides`` is what "tiny" means everywhere (configs/tiny.py's model and schedule);
``check_positive`` is the one check of counts given on a command line.

| name | what |
|---|---|
| ``rsfm120k`` | the paper's rSfM120k recipe as the original scripts ran it |
| ``rsfm120k_aug`` | the augmented setting (three descriptor sets stacked) |
| ``synthetic`` | the built-in synthetic benchmark (the demo's recipe) |
| ``tiny`` | random in-memory data: seconds per run, for tests and smoke checks |
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Iterable

import ml_collections

from csa_jax.errors import InputError, fail

_HERE = os.path.dirname(os.path.abspath(__file__))
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

# configs/tiny.py's model shape and schedule: what "tiny" means for ``csa-jax train --config tiny``,
# the tests, ``csa-jax experiment --size tiny`` and ``csa-jax demo --size tiny``. Those apply
# these keys to their own base config; its recipe (dropout, learning rates) stays the base's.
TINY_KEYS = ("model.anchors", "model.dim", "model.depth", "model.heads", "model.mlp_ratio",
             "data.K", "train.global_batch", "train.epochs", "train.warmup_epochs")


def names() -> list[str]:
  """The configs shipped with csa_jax."""
  return sorted(f[:-3] for f in os.listdir(_HERE) if f.endswith(".py") and not f.startswith("_"))


def resolve(name_or_path: str) -> str:
  """The file a ``--config`` value means: an existing path, else a shipped config's name."""
  p = os.fspath(name_or_path)
  if os.path.isfile(p):
    return p
  stem = p[:-3] if p.endswith(".py") else p
  if stem in names():
    return os.path.join(_HERE, stem + ".py")
  raise InputError(f"{p}: --config: expected a config file or one of {', '.join(names())}, "
                   "found neither")


def load_file(name_or_path: str) -> ml_collections.ConfigDict:
  """Runs a config file's ``get_config()``; unlocked, no overrides."""
  path = resolve(name_or_path)
  mod_name = "_csa_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(mod_name, path)
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
    config = ml_collections.ConfigDict(config)
  if not isinstance(config, ml_collections.ConfigDict):
    raise InputError(f"{path}: get_config(): expected a ConfigDict, found "
                     f"{type(config).__name__}")
  return config


def load(name_or_path: str, overrides: Iterable[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  """A config with ``(dotted key, text)`` overrides applied, locked."""
  config = load_file(name_or_path)
  for key, text in overrides:
    set_override(config, key, text)
  config.lock()
  return config


def tiny_overrides() -> dict:
  """configs/tiny.py's values of ``TINY_KEYS``, as ``{dotted key: value}``."""
  tiny = load_file("tiny")
  out = {}
  for dotted in TINY_KEYS:
    group, key = dotted.split(".")
    out[dotted] = tiny[group][key]
  return out


def check_positive(field: str, values, source: str = "command line") -> list:
  """``values`` as a list when every one is >= 1, else one ``InputError`` line naming ``field``.

  The one check of counts given on a command line (``--K``, ``--seeds``, ``--k-values``, ...):
  ``csa-jax experiment`` and, through ``cli.rerank_flags``, ``csa-jax eval`` and ``rerank``.

  Args:
    field: the flag or key the error line names.
    values: one value or a list or tuple of them; None (not given) is skipped.
    source: where the values came from.

  Returns:
    The values as a list, None left out.

  Raises:
    InputError: ``<source>: <field>: expected an integer >= 1, found <value>`` for the first
      value below 1, or ``found none`` for an empty list.
  """
  given = list(values) if isinstance(values, (list, tuple)) else [values]
  if not given:
    raise fail(source, field, "an integer >= 1", "none")
  given = [v for v in given if v is not None]
  for v in given:
    if v < 1:
      raise fail(source, field, "an integer >= 1", str(v))
  return given


def as_plain(config) -> dict:
  """The config as JSON would store it (tuples become lists): what is saved and compared."""
  return json.loads(json.dumps(config.to_dict()))


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


def set_override(config: ml_collections.ConfigDict, dotted: str, text: str,
                 source: str = "--config") -> None:
  """Sets ``config.<dotted>`` from command-line ``text``, parsed to the leaf's type.

  Args:
    config: an unlocked or locked ConfigDict (existing keys only either way).
    dotted: ``a.b.c``.
    text: the value as typed on the command line.
    source: where the override came from, for the error line.
  """
  node, parts = config, dotted.split(".")
  full = f"config.{dotted}"
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = "config." + ".".join(parts[:i]) if i else "the config"
      known = (", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict)
               else "none")
      raise InputError(f"{source}: {full}: expected a key of {where} ({known}), found unknown "
                       f"key {part!r}")
    if i < len(parts) - 1:
      node = node[part]
  key = parts[-1]
  current, type_ = node[key], node.get_type(key)
  if isinstance(current, ml_collections.ConfigDict):
    raise InputError(f"{source}: {full}: expected a leaf value, found a group "
                     f"(set one of {', '.join(sorted(current.keys()))})")
  # ``placeholder(type)`` leaves are stored as FieldReferences: the only leaves that may be None.
  nullable = isinstance(node._fields.get(key), ml_collections.FieldReference)  # pylint: disable=protected-access
  if nullable and text.strip() in ("None", "none", "null"):
    value = None
  elif type_ is type(None):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
  elif type_ is tuple:
    value = _parse_tuple(text, current or (), full, source)
  else:
    value = _parse_scalar(text, type_, full, source)
  try:
    node[key] = value
  except (TypeError, ValueError) as e:
    raise InputError(f"{source}: {full}: expected {type_.__name__}, found {text!r} ({e})") \
        from None


def split_flags(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
  """Pulls ``--config NAME_OR_PATH`` and ``--config.a.b=value`` (or ``--config.a.b value``) out.

  Returns:
    (config name or path, or None; [(dotted key, text)]; the remaining arguments).
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
        raise InputError("command line: --config: expected a config name or file, found nothing")
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
