"""The ``ModelConfig`` an export records beside its weights, as JSON text, and the model rebuilt
from both.

Every csa_jax export records its config (heads are not recoverable from the weights' shapes):
the ``.npz`` export as its ``model_config`` entry, the ``.safetensors`` export in its header's
metadata. The shape fields are read off the arrays and must agree with what the text records.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping

import numpy as np

from csa_jax.core.config import Model, ModelConfig
from csa_jax.errors import fail
from csa_jax.interop.pth import resolve_heads
from csa_jax.interop.state_dict import params_from_torch_state_dict

__all__ = ["config_json", "model_from_record"]

_SHAPE_KEYS = ("anchors", "dim", "depth", "mlp_ratio", "qkv_bias")


def config_json(cfg: ModelConfig) -> str:
  """``cfg`` as the JSON text every export records."""
  return json.dumps(dataclasses.asdict(cfg))


def model_from_record(sd: Mapping[str, np.ndarray], text: str, heads: int | None, path,
                      field: str) -> Model:
  """``Model(params, cfg)`` from an original-layout state_dict and the config text recorded
  with it.

  Args:
    sd: {original PyTorch name: array}.
    text: the recorded ``config_json`` text.
    heads: attention heads, if the caller knows them: must match the recorded count; used, with
      a warning when None, only for a config that lacks it.
    path: the file, for messages.
    field: where the file keeps ``text`` ("model_config"), for messages.

  Returns:
    ``Model(params, cfg)``.
  """
  path = str(path)
  try:
    cfg_dict = json.loads(text)
  except (ValueError, RecursionError) as e:
    raise fail(path, field, "JSON text", f"{type(e).__name__}: {str(e)[:100]}") from None
  if not isinstance(cfg_dict, dict):
    raise fail(path, field, "a JSON object", type(cfg_dict).__name__)
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(cfg_dict) - known)
  if unknown:
    raise fail(path, f"{field}.{unknown[0][:60]}", "a ModelConfig field", "an unknown key")
  overrides = {k: v for k, v in cfg_dict.items() if k not in _SHAPE_KEYS + ("heads",)}
  recorded = cfg_dict.get("heads")
  if recorded is not None and (type(recorded) is not int or recorded < 1):
    raise fail(path, f"{field}.heads", "a positive int", repr(str(recorded)[:40]))
  heads = resolve_heads(recorded, heads, path, "the export")
  params, cfg = params_from_torch_state_dict(sd, heads=heads, source=path, **overrides)
  for k in _SHAPE_KEYS:
    if k in cfg_dict and cfg_dict[k] != getattr(cfg, k):
      raise fail(path, f"{field}.{k}", f"{getattr(cfg, k)} (from the arrays)",
                 str(cfg_dict[k])[:40])
  return Model(params, cfg)
