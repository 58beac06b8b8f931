"""The objective against a direct float64 evaluation of docs/method.md section 4."""

import jax
import numpy as np

from csa_jax import csa_loss


def _direct(logits, y, mse, alpha):
  e = np.exp(logits.astype(np.float64))
  con = np.mean(-np.log((e * y).sum(1) / e.sum(1)))
  return con + alpha * mse, con


def test_loss_equals_direct_formula():
  rng = np.random.default_rng(0)
  cases = []
  for trial in range(20):
    b, n = rng.integers(1, 6), rng.integers(2, 30)
    logits = rng.uniform(-0.5, 0.5, size=(b, n)).astype(np.float32)
    y = (rng.random((b, n)) < 0.3).astype(np.float32)
    y[:, 0] = 1
    mse, alpha = float(rng.random()), float(rng.random())
    cases.append((logits, y, mse, alpha))
  # One compilation for all 20 shapes: called eagerly, each op compiled once per shape (~5x
  # slower); the function and its inputs are the same.
  results = jax.jit(lambda cs: [csa_loss(*c) for c in cs])(cases)
  for (logits, y, mse, alpha), (loss, aux) in zip(cases, results):
    want, con = _direct(logits, y, mse, alpha)
    assert abs(float(loss) - want) < 1e-5 and abs(float(aux["contrastive"]) - con) < 1e-5
    assert abs(float(aux["mse"]) - mse) < 1e-6


def test_loss_is_stable_for_large_logits():
  # Temperature 0.01 makes logits up to 100: exp overflows float32, logsumexp must not.
  logits = np.array([[100.0, 99.0, -100.0, 100.0]], np.float32)
  y = np.array([[1, 0, 0, 1]], np.float32)
  loss, _ = csa_loss(logits, y, 0.0, 0.2)
  want = np.log(2 * np.exp(0.0) + np.exp(-1.0) + np.exp(-200.0)) - np.log(2.0)
  assert np.isfinite(float(loss)) and abs(float(loss) - want) < 1e-5
  g = jax.grad(lambda l: csa_loss(l, y, 0.0, 0.2)[0])(logits)
  assert np.all(np.isfinite(np.asarray(g)))


def test_all_positive_rows_have_zero_contrastive_loss():
  logits = np.random.default_rng(1).normal(size=(3, 7)).astype(np.float32)
  _, aux = csa_loss(logits, np.ones((3, 7), np.float32), 1.0, 0.2)
  assert abs(float(aux["contrastive"])) < 1e-6


def test_row_without_positive_is_not_finite():
  # Such a step must be detectable so the trainer can skip it, as the original does.
  loss, _ = csa_loss(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32), 0.0, 0.2)
  assert not np.isfinite(float(loss))
