"""Original CSA checkpoints (``.pth``) as (params, ModelConfig), without torch.

The file is read by ``formats.torch_file`` (no torch code and no other global ever runs); the
state_dict is mapped by ``state_dict``. The weights' shapes do not tell the number of attention
heads: a count the checkpoint records wins, else the caller's, else the paper model's with one
warning.
"""

from __future__ import annotations

import logging
import os

from csa_jax.errors import InputError, fail
from csa_jax.formats.pickle_markers import brief
from csa_jax.formats.torch_file import read_torch_file
from csa_jax.interop.state_dict import params_from_torch_state_dict

__all__ = ["DEFAULT_HEADS", "load_torch_checkpoint", "recorded_heads", "resolve_heads"]

log = logging.getLogger(__name__)

DEFAULT_HEADS = 12  # the paper model's; the weights' shapes do not tell
HEADS_KEYS = ("heads", "num_heads")  # where a checkpoint may record the head count
_CONFIG_KEYS = ("model_config", "config", "cfg", "args")


def load_torch_checkpoint(path, heads: int | None = None, **cfg_overrides):
  """An original CSA ``.pth`` -> (params, ModelConfig), torch not needed.

  The weights' shapes do not tell the number of attention heads. A checkpoint that records it
  (an int under 'heads' / 'num_heads', at the top level or in a 'model_config', 'config', 'cfg'
  or 'args' dict) is loaded with that count, and a contradicting ``heads`` is refused; one that
  does not is loaded with ``heads``, else with ``DEFAULT_HEADS`` (the paper model's) and one
  logged warning saying so.

  Args:
    path: ``{'epoch', 'state_dict'}`` (what the original training saves) or a bare state_dict.
    heads: attention heads; None takes the recorded count, else ``DEFAULT_HEADS``.
    **cfg_overrides: further ``ModelConfig`` fields the weights do not determine.

  Returns:
    (params, cfg) as ``params_from_torch_state_dict``.
  """
  path = os.fspath(path)
  obj = read_torch_file(path)
  sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
  if not isinstance(sd, dict):
    raise InputError(f"{path}: state_dict: expected a dict of tensors, found {type(obj).__name__}")
  heads = resolve_heads(recorded_heads(obj, path) if sd is not obj else None, heads, path,
                        "the checkpoint")
  return params_from_torch_state_dict(sd, heads=heads, source=path, **cfg_overrides)


def recorded_heads(obj: dict, path: str) -> int | None:
  """The head count a checkpoint dict records next to its state_dict, if any (checked)."""
  places = [(obj, "")] + [(obj[k], f"{k}.") for k in _CONFIG_KEYS if isinstance(obj.get(k), dict)]
  for d, prefix in places:
    for k in HEADS_KEYS:
      if k in d:
        v = d[k]
        if type(v) is not int or v < 1:
          raise fail(path, prefix + k, "a positive int (the attention heads)", brief(v))
        return v
  return None


def resolve_heads(recorded: int | None, heads: int | None, path: str, where: str) -> int:
  """The head count to build the model with: the recorded one, the caller's, or the default.

  Args:
    recorded: what the file records (None: nothing).
    heads: what the caller asked for (None: nothing).
    path: the file, for messages.
    where: the file's kind, for messages ("the checkpoint", "the export").

  Returns:
    ``recorded`` when present (``heads`` must then agree), else ``heads``, else
    ``DEFAULT_HEADS`` with one logged warning.
  """
  if recorded is not None:
    if heads is not None and heads != recorded:
      raise fail(path, "heads", f"{recorded} (recorded in {where})", f"--heads {heads}")
    return recorded
  if heads is not None:
    return heads
  log.warning("%s: %s does not record its attention heads; assuming %d (the paper model's): "
              "pass --heads (heads= in Python) if it has another count", path, where,
              DEFAULT_HEADS)
  return DEFAULT_HEADS
