"""Original PyTorch state_dict <-> csa_jax params.

Names and shapes are those of docs/method.md section 3 ("Checkpoint layout of the original").
PyTorch Linear stores W as (out, in) and computes x W^T; Flax Dense stores (in, out): a transpose.
Everything here is numpy and never imports torch.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import numpy as np

from csa_jax.core.config import ModelConfig
from csa_jax.errors import InputError

# (flax path, torch name, is a Linear kernel) for one block; "{i}" is the block index.
_BLOCK = [
    (("norm1", "scale"), "norm1.weight", False),
    (("norm1", "bias"), "norm1.bias", False),
    (("attn", "qkv", "kernel"), "attn.qkv.weight", True),
    (("attn", "qkv", "bias"), "attn.qkv.bias", False),
    (("attn", "proj", "kernel"), "attn.proj.weight", True),
    (("attn", "proj", "bias"), "attn.proj.bias", False),
    (("norm2", "scale"), "norm2.weight", False),
    (("norm2", "bias"), "norm2.bias", False),
    (("mlp", "fc1", "kernel"), "mlp.fc1.weight", True),
    (("mlp", "fc1", "bias"), "mlp.fc1.bias", False),
    (("mlp", "fc2", "kernel"), "mlp.fc2.weight", True),
    (("mlp", "fc2", "bias"), "mlp.fc2.bias", False),
]
_TOP = [
    (("topk_proj", "kernel"), "topk_proj.weight", True),
    (("topk_proj", "bias"), "topk_proj.bias", False),
    (("feature_align", "kernel"), "feature_align.layers.0.weight", True),
    (("feature_align", "bias"), "feature_align.layers.0.bias", False),
]


def name_map(depth: int, qkv_bias: bool = True) -> list[tuple[tuple[str, ...], str, bool]]:
  """Every (flax path, torch name, transpose?) of a model of this depth."""
  out = list(_TOP)
  for i in range(depth):
    for path, name, t in _BLOCK:
      if name == "attn.qkv.bias" and not qkv_bias:
        continue
      out.append(((f"blocks_{i}",) + path, f"blocks.{i}.{name}", t))
  return out


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  d, l, h = cfg.dim, cfg.anchors, cfg.mlp_ratio * cfg.dim
  per_block = {
      "norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d),
      "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
      "norm2.weight": (d,), "norm2.bias": (d,), "mlp.fc1.weight": (h, d), "mlp.fc1.bias": (h,),
      "mlp.fc2.weight": (d, h), "mlp.fc2.bias": (d,)}
  shapes = {"topk_proj.weight": (d, l), "topk_proj.bias": (d,),
            "feature_align.layers.0.weight": (l, d), "feature_align.layers.0.bias": (l,)}
  for _, name, _ in name_map(cfg.depth, cfg.qkv_bias):
    if name.startswith("blocks."):
      shapes[name] = per_block[name.split(".", 2)[2]]
  return shapes


def params_from_torch_state_dict(sd: Mapping[str, np.ndarray], heads: int = 12,
                                 source: str = "state_dict", **cfg_overrides):
  """Original state_dict -> (params, ModelConfig).

  L, D, depth, mlp ratio and qkv_bias are read off the arrays; ``heads`` cannot be (it does not
  change any shape) and must be given; the paper model has 12. A DataParallel "module." prefix is
  stripped. Missing, unexpected or mis-shaped entries raise ``InputError`` naming the key.
  """
  sd = {re.sub(r"^module\.", "", k): np.asarray(v) for k, v in sd.items()}
  if "topk_proj.weight" not in sd:
    raise InputError(f"{source}: topk_proj.weight: expected a (D, L) array, found no such key "
                     f"(keys: {sorted(sd)[:5]}...)")
  w = sd["topk_proj.weight"]
  if w.ndim != 2 or min(w.shape) < 1:
    raise InputError(f"{source}: topk_proj.weight: expected a (D, L) array, found shape {w.shape}")
  dim, anchors = w.shape
  depth = 0
  while f"blocks.{depth}.norm1.weight" in sd:
    depth += 1
  if depth == 0:
    raise InputError(f"{source}: blocks.0.norm1.weight: expected ({dim},), found no such key")
  fc1 = sd.get("blocks.0.mlp.fc1.weight")
  if fc1 is None or fc1.ndim != 2 or fc1.shape[0] % dim:
    raise InputError(f"{source}: blocks.0.mlp.fc1.weight: expected (r*{dim}, {dim}), found "
                     f"{None if fc1 is None else fc1.shape}")
  if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1 or dim % heads:
    raise InputError(f"{source}: heads: expected a divisor of D={dim}, found {heads}")
  try:
    cfg = ModelConfig(anchors=int(anchors), dim=int(dim), depth=depth, heads=heads,
                      mlp_ratio=int(fc1.shape[0] // dim),
                      qkv_bias="blocks.0.attn.qkv.bias" in sd, **cfg_overrides)
  except (TypeError, ValueError) as e:
    raise InputError(f"{source}: model_config: expected valid ModelConfig fields, found {e}") \
        from None
  expected = _expected_shapes(cfg)
  extra = sorted(set(sd) - set(expected))
  if extra:
    raise InputError(f"{source}: {extra[0]}: expected only CSA re-ranker keys, found "
                     f"{len(extra)} unexpected key(s)")
  params: dict = {}
  for path, name, transpose in name_map(cfg.depth, cfg.qkv_bias):
    if name not in sd:
      raise InputError(f"{source}: {name}: expected shape {expected[name]}, found no such key")
    arr = sd[name]
    if tuple(arr.shape) != expected[name]:
      raise InputError(f"{source}: {name}: expected shape {expected[name]}, found {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
      raise InputError(f"{source}: {name}: expected a floating-point array, found {arr.dtype}")
    arr = np.asarray(arr, np.float32)
    if not np.isfinite(arr).all():  # after the cast: float64 1e300 becomes inf here
      raise InputError(f"{source}: {name}: expected finite parameters, found "
                       f"{int((~np.isfinite(arr)).sum())} NaN/inf values")
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.ascontiguousarray(arr.T if transpose else arr)
  return params, cfg


def params_to_torch_state_dict(params) -> dict[str, np.ndarray]:
  """csa_jax params -> original state_dict names and layouts (float32 numpy)."""
  params = jax.device_get(params)
  depth = sum(1 for k in params if k.startswith("blocks_"))
  qkv_bias = "bias" in params["blocks_0"]["attn"]["qkv"] if depth else True
  sd = {}
  for path, name, transpose in name_map(depth, qkv_bias):
    node = params
    for p in path:
      node = node[p]
    arr = np.asarray(node, np.float32)
    if not np.isfinite(arr).all():
      raise ValueError(f"params_to_torch_state_dict: {name} holds NaN/inf; a model with "
                       "non-finite parameters is never written")
    sd[name] = np.ascontiguousarray(arr.T if transpose else arr)
  return sd
