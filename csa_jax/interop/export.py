"""Trained-model files: csa_jax exports and original checkpoints behind one loader.

An export is an ``.npz`` holding ``param/<original PyTorch name>`` arrays (the layout
of docs/method.md section 3, so any PyTorch user can ``load_state_dict`` it after
``torch.from_numpy``) and
``model_config``, the ``ModelConfig`` as JSON text (heads are not recoverable from shapes, so
every export records them and ``load_model`` uses the recorded count).
No pickles: ``np.load(..., allow_pickle=False)`` reads it; csa_jax reads it through ``npyio``,
which checks every member's size against the bytes present first.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from csa_jax.core.config import Model, ModelConfig
from csa_jax.errors import InputError
from csa_jax.fileio import save_npz
from csa_jax.formats.npyio import load_npz
from csa_jax.formats.regular_file import check_regular
from csa_jax.interop.pth import load_torch_checkpoint, resolve_heads
from csa_jax.interop.state_dict import params_from_torch_state_dict, params_to_torch_state_dict

EXPORT_NAME = "state_dict.npz"


def save_export(path, params, cfg: ModelConfig) -> None:
  """Writes params (original names, float32) and cfg to ``path`` atomically."""
  arrays = {f"param/{k}": v for k, v in params_to_torch_state_dict(params).items()}
  save_npz(path, model_config=np.array(json.dumps(dataclasses.asdict(cfg))), **arrays)


def load_export(path, heads: int | None = None) -> Model:
  """``Model(params, cfg)`` from an ``.npz`` written by ``save_export``.

  Args:
    path: the export.
    heads: attention heads, if the caller knows them: must match the recorded count (every
      export records it); used, with a warning when None, only for a config that lacks it.

  Returns:
    ``Model(params, cfg)``.
  """
  z = load_npz(path)  # sizes checked against the bytes present before anything is allocated
  if "model_config" not in z:
    raise InputError(f"{path}: model_config: expected the model's config as JSON text, "
                     "found no such entry (not a csa_jax export)")
  mc = z["model_config"]
  if mc.ndim != 0 or mc.dtype.kind != "U":
    raise InputError(f"{path}: model_config: expected one JSON string, found an array of shape "
                     f"{mc.shape} ({mc.dtype})")
  try:
    cfg_dict = json.loads(str(mc))
  except (ValueError, RecursionError) as e:
    raise InputError(f"{path}: model_config: expected JSON text, found {type(e).__name__}: "
                     f"{str(e)[:100]}") from None
  if not isinstance(cfg_dict, dict):
    raise InputError(f"{path}: model_config: expected a JSON object, found "
                     f"{type(cfg_dict).__name__}")
  sd = {k[len("param/"):]: v for k, v in z.items() if k.startswith("param/")}
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(cfg_dict) - known)
  if unknown:
    raise InputError(f"{path}: model_config.{unknown[0]}: expected a ModelConfig field, found an "
                     "unknown key")
  shape_keys = ("anchors", "dim", "depth", "mlp_ratio", "qkv_bias")
  overrides = {k: v for k, v in cfg_dict.items() if k not in shape_keys + ("heads",)}
  recorded = cfg_dict.get("heads")
  if recorded is not None and (type(recorded) is not int or recorded < 1):
    raise InputError(f"{path}: model_config.heads: expected a positive int, found "
                     f"{str(recorded)[:40]!r}")
  heads = resolve_heads(recorded, heads, str(path), "the export")
  params, cfg = params_from_torch_state_dict(sd, heads=heads, source=str(path), **overrides)
  for k in shape_keys:
    if k in cfg_dict and cfg_dict[k] != getattr(cfg, k):
      raise InputError(f"{path}: model_config.{k}: expected {getattr(cfg, k)} (from the arrays), "
                       f"found {cfg_dict[k]}")
  return Model(params, cfg)


def load_model(path, heads: int | None = None) -> Model:
  """Any trained model -> ``Model(params, cfg)``, as every host driver takes it.

  Args:
    path: a csa_jax export (.npz), a training workdir holding ``state_dict.npz``, or an original
      CSA ``.pth``; a regular file (a FIFO or device is refused before it is read).
    heads: attention heads. A count the file records wins (a different ``heads`` is refused);
      a file that records none (an original ``.pth``) uses ``heads``, else 12, the paper
      model's, with one logged warning.

  Returns:
    ``Model(params, cfg)``, a NamedTuple: ``params, cfg = load_model(path)`` still works.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    inner = os.path.join(path, EXPORT_NAME)
    if not os.path.exists(inner):
      raise InputError(f"{path}: {EXPORT_NAME}: expected a finished training workdir, found no "
                       "exported model in it")
    path = inner
  if not os.path.exists(path):
    raise InputError(f"{path}: file: expected a model (.npz export, workdir or .pth), found no "
                     "such file")
  check_regular(path, "a readable model file")  # before any format is probed
  if path.endswith(".npz"):
    return load_export(path, heads)
  return Model(*load_torch_checkpoint(path, heads=heads))
