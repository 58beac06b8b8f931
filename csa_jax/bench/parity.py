"""Parity checks that make the race fair: csa_jax and PyTorch must compute the same model.

Both sides run in true float32 (JAX's default on GPUs would be TF32 matmuls, torch's autocast
fp16), on the same weights and inputs; a difference above the tolerance stops the benchmark.
torch is imported only inside the checks.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import numpy as np

from csa_jax.bench import machine
from csa_jax.bench.contestants import torch_affinity
from csa_jax.core.affinity import rerank_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import rerank_scores, training_outputs
from csa_jax.core.losses import csa_loss


class ParityError(AssertionError):
  """csa_jax and PyTorch disagree: timing them against each other would be meaningless."""


def check_close(a, b, tol: float, what: str) -> float:
  """The largest absolute difference of two arrays, which must be at most ``tol``.

  Args:
    a: csa_jax's values.
    b: torch's values, of the same shape.
    tol: the largest difference accepted.
    what: the quantity, for the error message.

  Returns:
    max |a - b| (0 for empty arrays).

  Raises:
    ParityError: shapes differ, the difference exceeds ``tol``, or it is NaN.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ParityError(f"{what}: shapes differ, csa_jax {a.shape} vs torch {b.shape}")
  diff = float(np.max(np.abs(a - b))) if a.size else 0.0
  if not diff <= tol:
    raise ParityError(f"{what}: csa_jax and torch differ by {diff:.3g} > tol {tol:g}: not the "
                      "same model, refusing to time them against each other")
  return diff


@contextlib.contextmanager
def _torch_float32_eval(torch_model):
  """The torch model in eval mode without autocast for the body; restored afterwards."""
  from csa_jax.interop import torch_reference  # pylint: disable=g-import-not-at-top
  torch = torch_reference.require_torch()
  was_amp, was_training = torch_model.autocast, torch_model.training
  torch_model.autocast = False
  torch_model.eval()
  try:
    with torch.no_grad():
      yield
  finally:
    torch_model.autocast = was_amp
    torch_model.train(was_training)


def rerank_parity(params, cfg: ModelConfig, torch_model, q_QxC, db_NxC, top_QxT, k: int,
                  tol: float) -> float:
  """Re-rank scores of both sides on the same queries, in float32.

  Args:
    params: csa_jax's parameters.
    cfg: the model.
    torch_model: the same weights in the original architecture
      (``interop.torch_reference.torch_model_from_params``).
    q_QxC, db_NxC, top_QxT: queries, database and first-round ranking (host arrays).
    k: candidates re-ranked per query.
    tol: the largest score difference accepted.

  Returns:
    The largest score difference. Raises ``ParityError`` above ``tol``.
  """
  # True float32 on both sides: JAX's default on GPUs would be TF32 matmuls.
  with jax.default_matmul_precision("highest"):
    s_jax = rerank_scores(params, rerank_affinity(q_QxC, db_NxC, top_QxT, k, cfg.anchors),
                          cfg.replace(dtype="float32"))
  dev = next(torch_model.parameters()).device
  t = [machine.to_torch(a, dev) for a in (q_QxC, db_NxC, top_QxT)]
  with _torch_float32_eval(torch_model):
    s_torch = torch_model.forward_feature(torch_affinity(*t, k, cfg.anchors))
  return check_close(s_jax, s_torch.float().cpu().numpy(), tol, "re-rank scores")


@functools.partial(jax.jit, static_argnames=("cfg", "alpha"))
def _eval_loss(params, aff_BxKxL, targets_BxK, cfg, alpha):
  logits_BxK, mse = training_outputs(params, aff_BxKxL, cfg)
  return csa_loss(logits_BxK, targets_BxK, mse, alpha)[0]


def loss_parity(params, cfg: ModelConfig, torch_model, aff_BxKxL, targets_BxK, alpha: float,
                tol: float) -> float:
  """The eval-mode training loss (contrastive + alpha * mse) of both sides, in float32.

  Args:
    params, cfg, torch_model: as for ``rerank_parity``.
    aff_BxKxL: training affinities.
    targets_BxK: their targets (token 0 positive).
    alpha: weight of the MSE term.
    tol: the largest loss difference accepted.

  Returns:
    The loss difference. Raises ``ParityError`` above ``tol``.
  """
  from csa_jax.interop import torch_reference  # pylint: disable=g-import-not-at-top
  with jax.default_matmul_precision("highest"):
    loss_jax = _eval_loss(params, aff_BxKxL, targets_BxK, cfg.replace(dtype="float32"), alpha)
  dev = next(torch_model.parameters()).device
  with _torch_float32_eval(torch_model):
    x, y = (machine.to_torch(a, dev) for a in (aff_BxKxL, targets_BxK))
    exp_sim, mse_t = torch_model(x)
    loss_torch, _ = torch_reference.original_loss(exp_sim, y, mse_t, alpha)
  return check_close(loss_jax, loss_torch.item(), tol, "training loss")


def arena_rerank_parity(a, q_QxC, top_QxT, k: int, tol: float) -> dict:
  """``rerank_parity`` of every csa_jax contestant of an arena against its PyTorch model.

  Args:
    a: the run's ``arena.Arena``, with PyTorch.
    q_QxC, top_QxT: a few queries and their first-round ranking (host).
    k: candidates re-ranked per query.
    tol: the largest score difference accepted.

  Returns:
    csa_jax contestant name -> {'rerank_max_abs_diff'}. Raises ``ParityError`` at the first
    contestant above ``tol``.
  """
  return {name: {"rerank_max_abs_diff": rerank_parity(a.params, c, a.tmodel, q_QxC, a.db_NxC,
                                                      top_QxT, k, tol)}
          for name, c in a.jax_cfgs.items()}


def arena_loss_parity(a, aff_BxKxL, targets_BxK, alpha: float, tol: float) -> dict:
  """``loss_parity`` of every csa_jax contestant of an arena, each against fresh PyTorch weights.

  Args:
    a: the run's ``arena.Arena``, with PyTorch.
    aff_BxKxL, targets_BxK: a few training samples.
    alpha: weight of the MSE term.
    tol: the largest loss difference accepted.

  Returns:
    csa_jax contestant name -> loss difference. Raises ``ParityError`` above ``tol``.
  """
  return {name: loss_parity(a.params, c, a.fresh_torch_model(), aff_BxKxL, targets_BxK, alpha,
                            tol) for name, c in a.jax_cfgs.items()}
