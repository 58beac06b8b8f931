"""Trained-model files: csa_jax exports and original checkpoints behind one loader.

An export is an ``.npz`` holding ``param/<original PyTorch name>`` arrays (the layout
of docs/method.md section 3, so any PyTorch user can ``load_state_dict`` it after
``torch.from_numpy``) and
``model_config``, the ``ModelConfig`` as JSON text (heads are not recoverable from shapes, so
every export records them and ``load_model`` uses the recorded count).
No pickles: ``np.load(..., allow_pickle=False)`` reads it; csa_jax reads it through ``npyio``,
which checks every member's size against the bytes present first.

The same weights and config also go to ``.safetensors`` (``safetensors_export``): ``save_export``
and ``load_model`` pick the format by the path's suffix.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from csa_jax.core.config import Model, ModelConfig
from csa_jax.errors import InputError
from csa_jax.fileio import check_replaceable, save_npz
from csa_jax.formats.npyio import load_npz
from csa_jax.formats.regular_file import check_regular
from csa_jax.interop.model_record import config_json, model_from_record
from csa_jax.interop.pth import load_torch_checkpoint
from csa_jax.interop.safetensors_export import load_safetensors_model, save_safetensors_export
from csa_jax.interop.state_dict import params_to_torch_state_dict

EXPORT_NAME = "state_dict.npz"


def save_export(path, params, cfg: ModelConfig) -> None:
  """Writes params (original names, float32) and cfg to ``path`` atomically.

  Args:
    path: a ``.safetensors`` path writes that format (``safetensors_export``); any other path an
      ``.npz`` export. Either way only a new path or an export csa_jax wrote is replaced.
    params: the parameter pytree; a NaN/inf anywhere is refused (``ValueError``) before anything
      is written.
    cfg: its ``ModelConfig``.
  """
  if os.fspath(path).endswith(".safetensors"):
    save_safetensors_export(path, params, cfg)
    return
  arrays = {f"param/{k}": v for k, v in params_to_torch_state_dict(params).items()}
  check_npz_target(path, "path")
  save_npz(path, model_config=np.array(config_json(cfg)), **arrays)


def check_npz_target(path, field: str = "path") -> None:
  """Fails unless ``save_export`` may write an ``.npz`` at ``path``: a new file, or an export
  csa_jax wrote, in a writable directory.

  Args:
    path: the output file.
    field: the argument or flag that named it, for the message.
  """
  check_replaceable(path, field, is_csa_jax_npz, "an .npz export")


def is_csa_jax_npz(path) -> bool:
  """Whether ``path`` is a regular zip file whose members include an export's model_config
  (only the zip directory is read)."""
  path = os.fspath(path)
  if os.path.islink(path) or not os.path.isfile(path):
    return False
  try:
    with zipfile.ZipFile(path) as z:
      return "model_config.npy" in z.namelist()
  except (OSError, zipfile.BadZipFile, ValueError):
    return False


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
  sd = {k[len("param/"):]: v for k, v in z.items() if k.startswith("param/")}
  return model_from_record(sd, str(mc), heads, path, "model_config")


def load_model(path, heads: int | None = None) -> Model:
  """Any trained model -> ``Model(params, cfg)``, as every host driver takes it.

  Args:
    path: a csa_jax export (.npz or .safetensors), a training workdir holding
      ``state_dict.npz``, an original CSA ``.pth``, or a ``.safetensors`` state_dict of the
      original's names; a regular file (a FIFO or device is refused before it is read).
    heads: attention heads. A count the file records wins (a different ``heads`` is refused);
      a file that records none (an original ``.pth``, a foreign ``.safetensors``) uses ``heads``,
      else 12, the paper model's, with one logged warning.

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
    raise InputError(f"{path}: file: expected a model (.npz or .safetensors export, workdir or "
                     ".pth), found no such file")
  check_regular(path, "a readable model file")  # before any format is probed
  if path.endswith(".npz"):
    return load_export(path, heads)
  if path.endswith(".safetensors"):
    return load_safetensors_model(path, heads)
  return Model(*load_torch_checkpoint(path, heads=heads))
