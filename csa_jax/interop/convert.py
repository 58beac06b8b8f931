"""Converting a trained model between the formats ``load_model`` reads: ``.pth``, ``.npz`` and
``.safetensors``.

The weights go across bit for bit (every format holds the original state_dict's float32
tensors). What a format can record goes with them: the ``.npz`` and ``.safetensors`` exports
record the whole ``ModelConfig``; a ``.pth`` written here is what the original training saves,
``{'epoch', 'state_dict'}``, plus the head count under 'heads' (which ``load_model`` reads back;
the original code ignores it), so the config's other fields, which no original checkpoint
carries, are not kept there. Writing a ``.pth`` needs torch (the ``torch`` extra); reading never
does.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from csa_jax.core.config import Model, ModelConfig
from csa_jax.errors import fail
from csa_jax.fileio import atomic_path, check_distinct, check_output_path
from csa_jax.interop.export import check_npz_target, load_model, save_export
from csa_jax.interop.safetensors_export import check_safetensors_target
from csa_jax.interop.state_dict import params_to_torch_state_dict

__all__ = ["WEIGHT_SUFFIXES", "convert_model", "save_pth"]

WEIGHT_SUFFIXES = (".pth", ".npz", ".safetensors")


def save_pth(path, params, cfg: ModelConfig | None = None, epoch: int | None = None, *,
             replace: bool = False) -> None:
  """Writes params as an original-style ``torch.save`` checkpoint, atomically.

  ``{'epoch': epoch, 'state_dict': {name: float32 tensor}, 'heads': cfg.heads}``, each key only
  when given; the original code loads it with ``load_state_dict(ckpt['state_dict'])``. csa_jax
  cannot tell a ``.pth`` it wrote from anyone else's without reading it whole, so only a new path
  is written: an existing file is refused, never replaced, unless the caller owns the place
  (``replace``: the training workdir's ``state_dict.pth``).

  Args:
    path: the output file (new).
    params: the parameter pytree; a NaN/inf anywhere is refused (``ValueError``) before anything
      is written.
    cfg: its ``ModelConfig``, to record the head count (None: not recorded).
    epoch: the training epoch to record, as the original does (None: not recorded).
    replace: replace an existing file (only where csa_jax owns the directory).

  Raises:
    ImportError: torch is not installed.
    InputError: ``path`` exists, is a directory or cannot be written.
  """
  try:
    import torch  # noqa: PLC0415  (optional: only this writer needs it)
  except ImportError:
    raise ImportError("save_pth needs torch (pip install 'csa_jax[torch]'); .npz and "
                      ".safetensors are written without it") from None
  path = os.fspath(path)
  sd = params_to_torch_state_dict(params)  # refuses non-finite values
  if replace:
    check_output_path(path, "path")
  else:
    _check_pth_target(path, "path")
  obj: dict = {} if epoch is None else {"epoch": int(epoch)}
  obj["state_dict"] = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}
  if cfg is not None:
    obj["heads"] = int(cfg.heads)
  with atomic_path(path) as tmp:
    torch.save(obj, tmp)


def convert_model(src, dst, heads: int | None = None) -> Model:
  """Reads any model ``load_model`` reads and writes it to ``dst``, its format told by suffix.

  Args:
    src: a ``.pth``, ``.npz`` or ``.safetensors`` model, or a training workdir.
    dst: the output, ending in ``.pth`` (``save_pth``: a new path, torch needed), ``.npz`` or
      ``.safetensors`` (``save_export``); never ``src`` itself.
    heads: attention heads, for a source that does not record them (``load_model``).

  Returns:
    The ``Model`` converted. A ``.pth`` source's 'epoch' is not carried over (no export records
    one).
  """
  src, dst = os.fspath(src), os.fspath(dst)
  if not dst.endswith(WEIGHT_SUFFIXES):
    raise fail(dst, "dst", f"a path ending in {', '.join(WEIGHT_SUFFIXES)}",
               repr(os.path.basename(dst)[-40:]))
  # Every check on dst before the model is read: a refusal costs nothing.
  if dst.endswith(".pth"):
    if importlib.util.find_spec("torch") is None:
      raise ImportError("writing a .pth needs torch (pip install 'csa_jax[torch]'); .npz and "
                        ".safetensors are written without it")
    _check_pth_target(dst, "dst")
  elif dst.endswith(".safetensors"):
    check_safetensors_target(dst, "dst")
  else:
    check_npz_target(dst, "dst")
  check_distinct([("dst", dst)], [("src", src)])
  model = load_model(src, heads)
  if dst.endswith(".pth"):
    save_pth(dst, model.params, model.cfg)
  else:
    save_export(dst, model.params, model.cfg)
  return model


def _check_pth_target(path: str, field: str) -> None:
  check_output_path(path, field)
  if os.path.lexists(path):
    raise fail(path, field, "a new .pth path (an existing one is never replaced)",
               "an existing file")
