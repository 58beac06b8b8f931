"""The original CSA re-ranker in PyTorch, for side-by-side checks and benchmarks.

A faithful re-implementation (docs/method.md section 3) of the original ``RerankTransformer``
(MCC-WH/CSA): same module tree, so ``state_dict()`` has the original names (``topk_proj``,
``blocks.{i}.attn.qkv``, ..., ``feature_align.layers.0``), same dropouts, timm-style DropPath,
exact GELU, LayerNorm eps 1e-5, and the original's two entry points:

- ``forward_feature(x_BxNxL) -> scores (B, N-1)``: what the original's test script calls;
- ``forward(x_BxNxL) -> (exp_sim (B, N), mse)``: what its training loop calls.

Like the original (decorated with ``@autocast()``) both run under fp16 autocast on CUDA; set
``model.autocast = False`` for float32 parity checks. On CPU autocast is off, as in the original.

torch is an optional extra: this module imports it only when a model is built, and
``import csa_jax`` never imports this module. The classes are reachable as module attributes
(``csa_jax.interop.torch_reference.RerankTransformer``), which also import torch on first access.
"""

from __future__ import annotations

import functools
import types

import numpy as np

from csa_jax.core.config import ModelConfig
from csa_jax.interop.state_dict import params_from_torch_state_dict, params_to_torch_state_dict

_CLASS_NAMES = ("DropPath", "Mlp", "Attention", "Block", "FeatureAlign", "RerankTransformer")


def require_torch():
  """Imports torch or raises an ImportError that says how to get it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("csa_jax.interop.torch_reference needs PyTorch: "
                      "pip install 'csa_jax[torch]'") from e
  return torch


@functools.lru_cache(maxsize=None)
def _classes() -> types.SimpleNamespace:
  """Defines the nn.Module classes once, on first use (so torch is imported only then)."""
  torch = require_torch()
  nn, F = torch.nn, torch.nn.functional

  def drop_path(x, p: float, training: bool):
    if p == 0.0 or not training:
      return x
    keep = 1.0 - p
    # One Bernoulli(keep) per sample, as timm: floor(keep + U[0, 1)).
    mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype,
                              device=x.device)).floor_()
    return x.div(keep) * mask

  class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
      super().__init__()
      self.p = p

    def forward(self, x):
      return drop_path(x, self.p, self.training)

  class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
      super().__init__()
      self.fc1 = nn.Linear(dim, hidden)
      self.act = nn.GELU()  # exact erf GELU
      self.fc2 = nn.Linear(hidden, dim)
      self.drop = nn.Dropout(drop)

    def forward(self, x):
      return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

  class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float):
      super().__init__()
      self.heads = heads
      self.scale = (dim // heads) ** -0.5
      self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
      self.attn_drop = nn.Dropout(attn_drop)
      self.proj = nn.Linear(dim, dim)
      self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
      b, n, c = x.shape
      qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
      q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, d)
      attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
      x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, n, c)
      return self.proj_drop(self.proj(x))

  class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path_rate):
      super().__init__()
      self.norm1 = nn.LayerNorm(dim, eps=1e-5)
      self.attn = Attention(dim, heads, qkv_bias, attn_drop, drop)
      # The original uses an identity when the rate is 0; neither holds parameters.
      self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
      self.norm2 = nn.LayerNorm(dim, eps=1e-5)
      self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x):
      x = x + self.drop_path(self.attn(self.norm1(x)))
      return x + self.drop_path(self.mlp(self.norm2(x)))

  class FeatureAlign(nn.Module):
    """The original's one-layer ``Feature_align`` (kept as a ModuleList for its key names)."""

    def __init__(self, dim: int, anchors: int):
      super().__init__()
      self.layers = nn.ModuleList([nn.Linear(dim, anchors)])

    def forward(self, x):
      return self.layers[0](x)

  class RerankTransformer(nn.Module):
    """The CSA re-ranker; constructor arguments follow ``ModelConfig``'s names."""

    def __init__(self, anchors=512, dim=768, depth=2, heads=12, mlp_ratio=4, qkv_bias=True,
                 drop=0.1, attn_drop=0.1, drop_path=0.1, temperature=2.0, autocast=True):
      super().__init__()
      self.t = temperature
      self.autocast = autocast
      self.sim_drop = nn.Dropout(drop)
      self.pos_drop = nn.Dropout(drop)
      self.topk_proj = nn.Linear(anchors, dim)
      self.feature_align = FeatureAlign(dim, anchors)
      rates = [r.item() for r in torch.linspace(0, drop_path, depth)]
      self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, qkv_bias, drop, attn_drop, r)
                                   for r in rates])
      self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
      if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
        if m.bias is not None:
          nn.init.zeros_(m.bias)
      elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

    def _amp(self, x):
      # The original wraps both entry points in torch.cuda.amp.autocast(): fp16 on CUDA only.
      return torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast and x.is_cuda)

    def _encode(self, x):
      h = self.pos_drop(self.topk_proj(self.sim_drop(x)))
      for blk in self.blocks:
        h = blk(h)
      return h

    def forward_feature(self, x_BxNxL):
      """Scores s_j = z_0 . z_j of tokens 1..N-1, (B, N-1)."""
      with self._amp(x_BxNxL):
        z = F.normalize(self._encode(x_BxNxL), dim=-1)
        return torch.sum(z[:, :1] * z[:, 1:], dim=-1)

    def forward(self, x_BxNxL):
      """Training outputs: exp_sim (B, N) = exp(z_0 . z_j / t) for j = 0..N-1, and the scalar
      feature-alignment distance against the input before dropout."""
      with self._amp(x_BxNxL):
        h = self._encode(x_BxNxL)
        z = F.normalize(h, dim=-1)
        exp_sim = torch.exp(torch.sum(z[:, :1] * z, dim=-1) / self.t)
        a = self.feature_align(h)
        d2 = (F.normalize(x_BxNxL, dim=-1) - F.normalize(a, dim=-1)).pow(2).sum(dim=-1)
        return exp_sim, d2.clamp(min=1e-4, max=1e4).sqrt().mean()

  return types.SimpleNamespace(DropPath=DropPath, Mlp=Mlp, Attention=Attention, Block=Block,
                               FeatureAlign=FeatureAlign, RerankTransformer=RerankTransformer)


def __getattr__(name):  # PEP 562: the classes exist once torch is imported.
  if name in _CLASS_NAMES:
    return getattr(_classes(), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def original_loss(exp_sim_BxN, targets_BxN, mse, alpha: float = 0.2):
  """The original training loop's objective: (loss, contrastive) as torch scalars."""
  torch = require_torch()
  ratio = torch.sum(exp_sim_BxN * targets_BxN, dim=-1) / torch.sum(exp_sim_BxN, dim=-1)
  contrastive = torch.mean(-torch.log(ratio))
  return contrastive + alpha * mse, contrastive


def build_torch_model(cfg: ModelConfig, state_dict=None, device="cpu", autocast=True):
  """A ``RerankTransformer`` of shape ``cfg`` on ``device``, float32 parameters.

  state_dict: optional original-layout weights (numpy or torch arrays); loaded strictly.
  """
  torch = require_torch()
  model = _classes().RerankTransformer(
      anchors=cfg.anchors, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
      mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, drop=cfg.drop, attn_drop=cfg.attn_drop,
      drop_path=cfg.drop_path, temperature=cfg.temperature, autocast=autocast)
  if state_dict is not None:
    model.load_state_dict({k: torch.tensor(np.asarray(v, np.float32))
                           for k, v in state_dict.items()}, strict=True)
  return model.to(device)


def torch_model_from_params(params, cfg: ModelConfig, device="cpu", autocast=True):
  """csa_jax params -> the PyTorch model with the same weights."""
  return build_torch_model(cfg, params_to_torch_state_dict(params), device, autocast)


def torch_state_dict_numpy(model) -> dict[str, np.ndarray]:
  """A PyTorch model's state_dict as float32 numpy arrays (original names)."""
  return {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}


def params_from_torch_model(model, heads: int, **cfg_overrides):
  """The PyTorch model -> (csa_jax params, ModelConfig)."""
  return params_from_torch_state_dict(torch_state_dict_numpy(model), heads=heads,
                                      source="torch model", **cfg_overrides)
