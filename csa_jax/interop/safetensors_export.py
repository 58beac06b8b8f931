"""Trained models as ``.safetensors``: the original PyTorch state_dict's names and layouts, float32,
with the ``ModelConfig`` in the header's metadata.

What csa_jax writes loads with ``safetensors.torch.load_file`` straight into the original
model's ``load_state_dict``; its ``__metadata__`` holds ``format: pt`` (the layout is PyTorch's)
and ``csa_jax.model_config``, the config as JSON text (as the ``.npz`` export records it), so
``load_model`` rebuilds the same ``Model``. A file without that key (a state_dict someone saved
with ``safetensors.torch.save_file``) loads as an original ``.pth`` state_dict does: a head count
recorded in its metadata (a decimal 'heads' or 'num_heads') wins, else the caller's, else the
paper model's with one warning. The file is read by ``formats.safetensors_file``, every claim of
its header checked before any data is read.
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np

from csa_jax.core.config import Model, ModelConfig
from csa_jax.errors import InputError, fail
from csa_jax.fileio import check_replaceable
from csa_jax.formats import safetensors_file as stf
from csa_jax.interop.model_record import config_json, model_from_record
from csa_jax.interop.pth import HEADS_KEYS, resolve_heads
from csa_jax.interop.state_dict import params_from_torch_state_dict, params_to_torch_state_dict

__all__ = ["CONFIG_KEY", "check_safetensors_target", "is_csa_jax_safetensors",
           "load_safetensors_model", "save_safetensors_export"]

CONFIG_KEY = "csa_jax.model_config"
# Float types numpy code downstream treats as opaque (kind 'V'): widened to float32 on load,
# exactly (every bfloat16 and float8 value is a float32 value).
_ML_FLOATS = frozenset(np.dtype(t) for t in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
                                             ml_dtypes.float8_e5m2))


def save_safetensors_export(path, params, cfg: ModelConfig) -> None:
  """Writes params (original names, float32) and cfg to ``path`` as ``.safetensors``, atomically.

  Only a new path, or a ``.safetensors`` csa_jax wrote (its header says so), is written: any
  other file there is left alone and refused.

  Args:
    path: the output file.
    params: the parameter pytree; a NaN/inf anywhere is refused (``ValueError``) before anything
      is written.
    cfg: its ``ModelConfig``.

  Raises:
    InputError: ``path`` is a directory, cannot be written, or holds a file csa_jax did not
      write.
  """
  path = os.fspath(path)
  sd = params_to_torch_state_dict(params)  # refuses non-finite values
  check_safetensors_target(path)
  stf.save_safetensors(path, sd, {"format": "pt", CONFIG_KEY: config_json(cfg)})


def check_safetensors_target(path, field: str = "path") -> None:
  """Fails unless ``save_safetensors_export`` may write ``path``: a new file, or one csa_jax
  wrote, in a writable directory.

  Args:
    path: the output file.
    field: the argument or flag that named it, for the message.
  """
  check_replaceable(path, field, is_csa_jax_safetensors, "a .safetensors export")


def is_csa_jax_safetensors(path) -> bool:
  """Whether ``path`` is a readable ``.safetensors`` whose metadata holds csa_jax's config."""
  try:
    return CONFIG_KEY in stf.read_safetensors_header(path).metadata
  except InputError:
    return False


def load_safetensors_model(path, heads: int | None = None) -> Model:
  """``Model(params, cfg)`` from a ``.safetensors`` state_dict in the original layout.

  Args:
    path: the file: a csa_jax export, or any state_dict of the original model's names (float
      dtypes are converted to float32; a DataParallel 'module.' prefix is stripped).
    heads: attention heads. A count the file records wins (a different ``heads`` is refused); a
      file that records none uses ``heads``, else 12 with one logged warning.

  Returns:
    ``Model(params, cfg)``.
  """
  path = os.fspath(path)
  tensors, metadata = stf.load_safetensors(path)
  sd = {k: v.astype(np.float32) if v.dtype in _ML_FLOATS else v for k, v in tensors.items()}
  if CONFIG_KEY in metadata:
    return model_from_record(sd, metadata[CONFIG_KEY], heads, path,
                             f"{stf.METADATA_KEY}.{CONFIG_KEY}")
  heads = resolve_heads(_recorded_heads(metadata, path), heads, path, "the checkpoint")
  return Model(*params_from_torch_state_dict(sd, heads=heads, source=path))


def _recorded_heads(metadata: dict[str, str], path: str) -> int | None:
  """The head count foreign metadata records, as ``pth.recorded_heads`` reads a checkpoint's."""
  for k in HEADS_KEYS:
    if k in metadata:
      v = metadata[k]
      if not (v.isascii() and v.isdigit() and len(v) <= 9 and int(v) >= 1):
        raise fail(path, f"{stf.METADATA_KEY}.{k}", "a positive decimal int (the attention heads)",
                   repr(v[:40]))
      return int(v)
  return None
