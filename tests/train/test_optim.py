"""The optimizer of the original recipe against hand-computed values and a numpy SGD."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csa_jax.train import optim
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import init_params


def test_schedule_equals_a_hand_computed_warmup_cosine_table():
  # warm-up 0.1 -> 1.0 over 3 steps (np.linspace, both ends), cosine to 0 over 4 steps.
  c = math.cos
  table = [0.1, 0.55, 1.0,
           1.0, 0.5 * (1 + c(math.pi / 4)), 0.5, 0.5 * (1 + c(3 * math.pi / 4)),
           0.5 * (1 + c(3 * math.pi / 4))]  # past the end: the last value
  sched = optim.warmup_cosine(0.1, 1.0, 0.0, warmup_steps=3, total_steps=7)
  got = [float(sched(t)) for t in range(8)]
  np.testing.assert_allclose(got, table, rtol=1e-6, atol=1e-7)
  # final_lr > 0, one warm-up step (linspace of length 1 is its start), then cosine.
  sched = optim.warmup_cosine(0.25, 2.0, 0.5, warmup_steps=1, total_steps=3)
  want = [0.25, 2.0, 0.5 + 0.75 * (1 + c(math.pi / 2))]
  np.testing.assert_allclose([float(sched(t)) for t in range(3)], want, rtol=1e-6)
  # No warm-up at all.
  sched = optim.warmup_cosine(0.0, 1.0, 0.0, warmup_steps=0, total_steps=2)
  np.testing.assert_allclose([float(sched(t)) for t in range(2)], [1.0, 0.5], rtol=1e-6)
  with pytest.raises(ValueError):
    optim.warmup_cosine(0.0, 1.0, 0.0, warmup_steps=5, total_steps=4)


def test_weight_decay_mask_covers_exactly_the_linear_kernels():
  cfg = ModelConfig(anchors=8, dim=16, depth=2, heads=2)
  params = jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))
  mask = optim.decay_mask(params)
  on = {"/".join(k.key for k in path)
        for path, v in jax.tree_util.tree_leaves_with_path(mask) if v}
  want = {"topk_proj/kernel", "feature_align/kernel"}
  for i in range(2):
    want |= {f"blocks_{i}/attn/qkv/kernel", f"blocks_{i}/attn/proj/kernel",
             f"blocks_{i}/mlp/fc1/kernel", f"blocks_{i}/mlp/fc2/kernel"}
  assert on == want
  # Everything else is 1-D (LayerNorm scale/bias, biases): the original's no-decay group.
  off = [v for path, v in jax.tree_util.tree_leaves_with_path(params)
         if "/".join(k.key for k in path) not in want]
  assert off and all(v.ndim == 1 for v in off)


def _tree():
  rng = np.random.default_rng(0)
  return {"dense": {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
                    "bias": rng.normal(size=(4,)).astype(np.float32)},
          "norm": {"scale": rng.normal(size=(4,)).astype(np.float32)}}


def _numpy_sgd(params, grads_seq, lrs, mu, wd, clip):
  """PyTorch SGD: clip the raw gradient, g += wd * p (matrices only), buf = mu buf + g,
  p -= lr buf."""
  p = jax.tree.map(np.copy, params)
  buf = jax.tree.map(np.zeros_like, params)
  for g, lr in zip(grads_seq, lrs):
    if clip:
      norm = math.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in jax.tree.leaves(g)))
      g = jax.tree.map(lambda x: x * min(1.0, clip / (norm + 1e-6)), g)
    g = {"dense": {"kernel": g["dense"]["kernel"] + wd * p["dense"]["kernel"],
                   "bias": g["dense"]["bias"]}, "norm": g["norm"]}
    buf = jax.tree.map(lambda b, x: mu * b + x, buf, g)
    p = jax.tree.map(lambda x, b: x - lr * b, p, buf)
  return p


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_optimizer_equals_pytorch_form_sgd_in_numpy(clip):
  params = _tree()
  rng = np.random.default_rng(1)
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
           for _ in range(5)]
  kw = dict(base_lr=0.3, warmup_lr=0.05, final_lr=0.01, warmup_steps=2, total_steps=5)
  sched = optim.warmup_cosine(kw["warmup_lr"], kw["base_lr"], kw["final_lr"], 2, 5)
  tx = optim.make_optimizer(**kw, momentum=0.9, weight_decay=0.1, clip_norm=clip)
  p, state = jax.tree.map(jnp.asarray, params), tx.init(params)
  update = jax.jit(tx.update)
  for g in grads:
    upd, state = update(g, state, p, loss=jnp.float32(1.0))
    p = jax.tree.map(lambda a, b: a + b, p, upd)
  want = _numpy_sgd(params, grads, [float(sched(t)) for t in range(5)], 0.9, 0.1, clip)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
  assert int(optim.optimizer_steps(state)) == 5 and int(state.skipped) == 0


def test_optimizer_matches_torch_sgd_when_torch_is_installed():
  torch = pytest.importorskip("torch")
  params, lr = _tree(), 0.2
  rng = np.random.default_rng(2)
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
           for _ in range(4)]
  tp = {k: torch.tensor(v) for k, v in
        {"k": params["dense"]["kernel"], "b": params["dense"]["bias"],
         "s": params["norm"]["scale"]}.items()}
  opt = torch.optim.SGD([{"params": [tp["b"], tp["s"]], "weight_decay": 0.0},
                         {"params": [tp["k"]], "weight_decay": 0.05}], lr=lr, momentum=0.9)
  tx = optim.make_optimizer(base_lr=lr, warmup_lr=lr, final_lr=lr, warmup_steps=0,
                            total_steps=10, weight_decay=0.05)
  p, state = jax.tree.map(jnp.asarray, params), tx.init(params)
  update = jax.jit(tx.update)
  for g in grads:
    for name, arr in (("k", g["dense"]["kernel"]), ("b", g["dense"]["bias"]),
                      ("s", g["norm"]["scale"])):
      tp[name].grad = torch.tensor(arr)
    opt.step()
    upd, state = update(g, state, p)
    p = jax.tree.map(lambda a, b: a + b, p, upd)
  np.testing.assert_allclose(np.asarray(p["dense"]["kernel"]), tp["k"].numpy(), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(p["norm"]["scale"]), tp["s"].numpy(), rtol=1e-5,
                             atol=1e-6)


def test_non_finite_updates_are_skipped_counted_and_leave_the_state_untouched():
  params = jax.tree.map(jnp.asarray, _tree())
  tx = optim.make_optimizer(base_lr=1.0, warmup_lr=0.1, final_lr=0.0, warmup_steps=3,
                            total_steps=6)
  g = jax.tree.map(jnp.ones_like, params)
  update = jax.jit(tx.update)
  # One applied step: momentum is non-zero.
  _, state = update(g, tx.init(params), params, loss=jnp.float32(1.0))
  bad_grad = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), g)
  for grads, loss in ((bad_grad, 1.0), (g, jnp.inf), (g, jnp.nan)):
    upd, new = update(grads, state, params, loss=jnp.float32(loss))
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(upd))
    assert not bool(new.last_ok)
    for a, b in zip(jax.tree.leaves(new.inner_state), jax.tree.leaves(state.inner_state)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(new.skipped) == int(state.skipped) + 1
    state = new
  assert int(state.skipped) == 3
  # The schedule advances only with applied steps: the next step uses lr(1), not lr(4).
  assert int(optim.optimizer_steps(state)) == 1
  upd, state = update(g, state, params, loss=jnp.float32(0.5))
  assert bool(state.last_ok) and int(optim.optimizer_steps(state)) == 2
