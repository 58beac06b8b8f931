"""What the contestants of one ``csa-jax bench`` run share, and the sets of them that race.

One model's weights in csa_jax (one contestant per attention implementation asked for) and, when
torch is there, in the original architecture; the descriptor database on both sides; the inputs
(queries and their first-round ranking, training batches) built the same way for every race.
``Arena.rerank_fns`` and ``Arena.train_fns`` give the contestants of one re-ranking batch or
training step, named as in the results; ``benchmark`` and ``curves`` race them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from csa_jax.bench import contestants as ct
from csa_jax.bench import machine
from csa_jax.core.affinity import training_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.normalize import l2_normalize

ALPHA, LR = 0.2, 1e-3  # the loss's MSE weight (docs/method.md section 4); any small rate


def jax_names(attentions) -> dict[str, str]:
  """csa_jax contestant name -> attention implementation.

  Args:
    attentions: the implementations asked for, the first the reference.

  Returns:
    ``{"csa_jax": a}`` for one (the name of earlier results), else ``{"csa_jax[a]": a, ...}`` in
    the order given.
  """
  attentions = list(attentions)
  if len(attentions) == 1:
    return {ct.JAX: attentions[0]}
  return {f"{ct.JAX}[{a}]": a for a in attentions}


@dataclasses.dataclass
class Arena:
  """The model, the database and the PyTorch side, built once per run.

  Attributes:
    params: csa_jax's parameters.
    cfg: the model as the PyTorch side and the FLOP model see it (float32; the first attention).
    jax_cfgs: csa_jax contestant name -> its run config (compute dtype, attention).
    db_NxC: the database descriptors (host, float32, unit rows).
    tm: ``csa_jax.interop.torch_reference`` when PyTorch races, else None.
    tdev: the ``torch.device`` of the PyTorch side, or None.
  """

  params: Any
  cfg: ModelConfig
  jax_cfgs: dict
  db_NxC: np.ndarray
  tm: Any = None
  tdev: Any = None

  def __post_init__(self):
    self.db_jax = jnp.asarray(self.db_NxC)
    self.sync = machine.torch_sync(self.tdev) if self.tm else None
    self.db_torch = machine.to_torch(self.db_NxC, self.tdev) if self.tm else None
    # One eval model serves every re-ranking race (no state); training gets a fresh one each.
    self.tmodel = (self.tm.torch_model_from_params(self.params, self.cfg, self.tdev)
                   if self.tm else None)

  @property
  def primary(self) -> str:
    """The csa_jax contestant that stands for csa_jax: the first attention asked for."""
    return next(iter(self.jax_cfgs))

  def fresh_torch_model(self):
    """The weights in a new original-architecture model (training changes it)."""
    return self.tm.torch_model_from_params(self.params, self.cfg, self.tdev)

  def rerank_fns(self, q_QxC: np.ndarray, top_QxT: np.ndarray, k: int,
                 compiled: bool = False) -> dict:
    """The contestants re-ranking one batch of queries.

    Args:
      q_QxC: the batch's queries (host).
      top_QxT: their first-round ranking, T >= max(K, L-1) (host).
      k: candidates re-ranked per query.
      compiled: add torch.compile (with PyTorch only).

    Returns:
      name -> contestant: every csa_jax variant, then torch_eager [and torch_compile].
    """
    q, top = jnp.asarray(q_QxC), jnp.asarray(top_QxT)
    fns = {name: ct.jax_rerank_fn(self.params, c, q, self.db_jax, top, k)
           for name, c in self.jax_cfgs.items()}
    if self.tm:
      qt, topt = machine.to_torch(q_QxC, self.tdev), machine.to_torch(top_QxT, self.tdev)
      args = (self.tmodel, qt, self.db_torch, topt, k, self.cfg.anchors, self.sync)
      fns[ct.EAGER] = ct.torch_rerank_fn(*args)
      if compiled:
        fns[ct.COMPILED] = ct.torch_rerank_fn(*args, compiled=True)
    return fns

  def train_fns(self, aff_BxKxL, targets_BxK, seed: int, compiled: bool = False,
                lr: float = LR, alpha: float = ALPHA) -> dict:
    """The contestants of one training step on a ready batch, each from the same weights.

    Args:
      aff_BxKxL, targets_BxK: the batch (``TrainingData.batch``), fed again every step.
      seed: csa_jax's dropout seed.
      compiled: add torch.compile (with PyTorch only).
      lr: the learning rate.
      alpha: weight of the MSE term.

    Returns:
      name -> stateful contestant, in the order of ``rerank_fns``.
    """
    fns = {name: ct.jax_train_fn(self.params, c, aff_BxKxL, targets_BxK, lr, alpha, seed)
           for name, c in self.jax_cfgs.items()}
    if self.tm:
      at = machine.to_torch(np.asarray(aff_BxKxL), self.tdev)
      yt = machine.to_torch(np.asarray(targets_BxK), self.tdev)
      fns[ct.EAGER] = ct.torch_train_fn(self.fresh_torch_model(), at, yt, lr, alpha, self.sync)
      if compiled:
        fns[ct.COMPILED] = ct.torch_train_fn(self.fresh_torch_model(), at, yt, lr, alpha,
                                             self.sync, compiled=True)
    return fns


def random_database(n: int, c: int, seed: int) -> np.ndarray:
  """``n`` random unit descriptors of size ``c`` (float32): the benchmark's database."""
  return l2_normalize(np.random.default_rng(seed).standard_normal((n, c), np.float32))


def queries(db_NxC: np.ndarray, n: int, t: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Random unit queries and their first-round ranking (not timed: the re-ranker's input).

  Args:
    db_NxC: the database.
    n: queries.
    t: ranking depth kept, >= max(K, L-1) of every race that uses them.
    seed: the queries' seed.

  Returns:
    (q_nxC float32, top_nxt int32).
  """
  q = l2_normalize(np.random.default_rng(seed).standard_normal((n, db_NxC.shape[1]), np.float32))
  top = np.argsort(-(q @ db_NxC.T), axis=1)[:, :t].astype(np.int32)
  return q, top


class TrainingData:
  """Training batches as docs/method.md section 2: neighbours inside the set, random labels."""

  def __init__(self, db_NxC: np.ndarray, anchors: int, k: int, seed: int):
    """Ranks the database against itself once; every batch size reuses it.

    Args:
      db_NxC: the database (its own training set).
      anchors: L.
      k: tokens per sample.
      seed: the cluster labels' seed is ``seed + 1``.
    """
    self.db = jnp.asarray(db_NxC)
    self.anchors, self.k = anchors, k
    self.nbrs = jnp.asarray(
        np.argsort(-(db_NxC @ db_NxC.T), axis=1)[:, :max(k, anchors)].astype(np.int32))
    self.clusters = jnp.asarray(
        np.random.default_rng(seed + 1).integers(0, 16, len(db_NxC)).astype(np.int32))

  def batch(self, b: int):
    """(aff_bxKxL, targets_bxK) of the first ``b`` samples (wrapping around the database)."""
    idx = jnp.arange(b, dtype=jnp.int32) % self.db.shape[0]
    return training_affinity(self.db, self.nbrs, self.clusters, idx, self.k, self.anchors)
