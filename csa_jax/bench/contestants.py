"""The contestants of ``csa-jax bench``: one re-ranking batch or one training step per call.

A contestant is a no-argument callable that runs its step to completion, synchronising its
device, so wall-clock time around the call is the step's time. csa_jax runs its library code;
PyTorch runs the original architecture as the original scripts do (eager, or through
``torch.compile``). torch is imported only inside the torch contestants.
"""

from __future__ import annotations

import jax
import numpy as np

from csa_jax import parallel
from csa_jax.core.affinity import rerank_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import rerank_scores

JAX, EAGER, COMPILED = "csa_jax", "torch_eager", "torch_compile"
WEIGHT_DECAY = 1e-6  # docs/method.md section 5


def torch_affinity(q_QxC, db_NxC, top_QxT, k: int, l: int):
  """The original test loop's affinity (docs/method.md section 1) in torch.

  Args:
    q_QxC, db_NxC: torch float32 queries and database.
    top_QxT: torch int64 first-round ranking, T >= max(K, L-1).
    k: candidates K.
    l: anchors L.

  Returns:
    float32 tensor aff_Qx(K+1)xL = [q, db[top[:K]]] @ [q, db[top[:L-1]]]^T.
  """
  import torch  # pylint: disable=g-import-not-at-top
  tokens = torch.cat([q_QxC[:, None], db_NxC[top_QxT[:, :k]]], dim=1)
  anchors = tokens[:, :l] if l <= k + 1 else torch.cat(
      [q_QxC[:, None], db_NxC[top_QxT[:, :l - 1]]], dim=1)
  return torch.bmm(tokens, anchors.transpose(1, 2))


def jax_rerank_fn(params, cfg: ModelConfig, q_QxC, db_NxC, top_QxT, k: int):
  """csa_jax re-ranking one batch: ``rerank_affinity`` then ``rerank_scores``, on device.

  Args:
    params, cfg: the model.
    q_QxC, db_NxC, top_QxT: device arrays of queries, database and first-round ranking.
    k: candidates re-ranked per query.

  Returns:
    The contestant: a no-argument function returning the batch's scores.
  """
  def run():
    return rerank_scores(params, rerank_affinity(q_QxC, db_NxC, top_QxT, k, cfg.anchors), cfg
                         ).block_until_ready()

  def xla_memory():
    both = jax.jit(lambda p, q, db, top: rerank_scores(
        p, rerank_affinity(q, db, top, k, cfg.anchors), cfg))
    return both.lower(params, q_QxC, db_NxC, top_QxT).compile().memory_analysis()
  run.xla_memory = xla_memory
  # The model's program (the affinity's is a gather and a matmul): what ``compiled_attention``
  # reads. The executable comes from JAX's in-memory cache after the first call.
  run.hlo_text = lambda: rerank_scores.lower(
      params, rerank_affinity(q_QxC, db_NxC, top_QxT, k, cfg.anchors), cfg).compile().as_text()
  return run


def torch_rerank_fn(model, q_QxC, db_NxC, top_QxT, k: int, l: int, sync, compiled=False):
  """The original test loop on one batch: its affinity, ``forward_feature`` under ``no_grad``.

  Args:
    model: the original architecture (``interop.torch_reference``).
    q_QxC, db_NxC, top_QxT: torch tensors on the model's device.
    k, l: candidates and anchors.
    sync: waits for the device (``machine.torch_sync``).
    compiled: run ``forward_feature`` through ``torch.compile``.

  Returns:
    The contestant.
  """
  import torch  # pylint: disable=g-import-not-at-top
  model.eval()
  fwd = torch.compile(model.forward_feature) if compiled else model.forward_feature

  def run():
    with torch.no_grad():  # as the original test loop
      out = fwd(torch_affinity(q_QxC, db_NxC, top_QxT, k, l))
    sync()
    return out
  return run


def jax_train_fn(params, cfg: ModelConfig, aff_BxKxL, targets_BxK, lr: float, alpha: float,
                 seed: int):
  """csa_jax's training step on a ready batch, on one device, dropouts on.

  ``train.step.make_batch_train_step`` with the recipe's optimizer (``optim.make_optimizer``:
  SGD momentum 0.9, weight decay on the weight matrices) at a constant learning rate.

  Args:
    params, cfg: the model's starting point.
    aff_BxKxL, targets_BxK: the batch, fed again every step.
    lr: the learning rate.
    alpha: weight of the MSE term.
    seed: the dropout keys' seed (folded with the step number).

  Returns:
    The contestant, stateful: each call runs the next step and returns its loss.
  """
  from csa_jax.train import optim  # pylint: disable=g-import-not-at-top
  from csa_jax.train import step as train_step  # pylint: disable=g-import-not-at-top
  tx = optim.make_optimizer(base_lr=lr, warmup_lr=lr, final_lr=0.0, warmup_steps=0,
                            total_steps=10_000, momentum=0.9, weight_decay=WEIGHT_DECAY)
  mesh = parallel.make_mesh(jax.devices()[:1])
  step = train_step.make_batch_train_step(cfg, tx, mesh, alpha)
  # Placed exactly like the step's outputs, so the second call does not compile again.
  state = {"s": parallel.put_replicated(train_step.TrainState(
      np.zeros([], np.int32), params, jax.jit(tx.init)(params)), mesh), "i": 0}
  key = jax.random.key(seed)

  def run():
    state["s"], metrics = step(state["s"], aff_BxKxL, targets_BxK,
                               jax.random.fold_in(key, state["i"]))
    state["i"] += 1
    return metrics["loss"].block_until_ready()

  compiled = lambda: step.jitted.lower(state["s"], aff_BxKxL, targets_BxK, key).compile()
  run.xla_memory = lambda: compiled().memory_analysis()
  run.hlo_text = lambda: compiled().as_text()
  return run


def torch_train_fn(model, aff_BxKxL, targets_BxK, lr: float, alpha: float, sync,
                   compiled=False):
  """The original training loop's step.

  Autocast + GradScaler on CUDA, SGD momentum 0.9 with coupled weight decay on the weight
  matrices (the original's parameter groups), the loss read back every step as the original does
  for its non-finite check.

  Args:
    model: the original architecture, in training mode from here on.
    aff_BxKxL, targets_BxK: torch tensors on the model's device, fed again every step.
    lr: the learning rate.
    alpha: weight of the MSE term.
    sync: waits for the device (``machine.torch_sync``).
    compiled: run the model through ``torch.compile``.

  Returns:
    The contestant, stateful: each call runs the next step and returns its loss.
  """
  import torch  # pylint: disable=g-import-not-at-top

  from csa_jax.interop.torch_reference import original_loss  # pylint: disable=g-import-not-at-top
  model.train()
  fwd = torch.compile(model) if compiled else model
  decayed = lambda n, p: p.ndim > 1 and not n.endswith(".bias")
  decay = [p for n, p in model.named_parameters() if decayed(n, p)]
  rest = [p for n, p in model.named_parameters() if not decayed(n, p)]
  opt = torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY},
                         {"params": rest, "weight_decay": 0.0}], lr=lr, momentum=0.9)
  amp = model.autocast and aff_BxKxL.is_cuda
  scaler = torch.amp.GradScaler("cuda", enabled=amp)

  def run():
    exp_sim, mse = fwd(aff_BxKxL)
    loss, _ = original_loss(exp_sim, targets_BxK, mse, alpha)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    value = loss.item()
    sync()
    return value
  return run
