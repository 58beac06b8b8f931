"""Re-ranking batches sized to the device's free memory."""

import types

import jax

from csa_jax import ModelConfig
from csa_jax.retrieval import batching

CFG = ModelConfig(anchors=8, dim=16, depth=1, heads=2, mlp_ratio=2)


def test_cpu_gets_a_fixed_batch_per_device():
  devs = jax.devices()
  assert batching.auto_batch_size(CFG, 16, 32, devs) == batching.CPU_BATCH * len(devs)
  assert batching.auto_batch_size(CFG, 16, 32, devs[:1]) == batching.CPU_BATCH


def test_query_bytes_count_inputs_and_grow_with_k():
  small = batching.query_bytes(CFG, 16, 32)
  large = batching.query_bytes(CFG, 256, 32)
  assert small >= 4 * (17 * 8 + 16 * 32)  # at least the affinity input and the gathered rows
  assert large > 8 * small  # the attention grows with K^2, the rest with K


def _gpu(limit, in_use):
  return types.SimpleNamespace(platform="gpu", device_kind="fake GPU",
                               memory_stats=lambda: {"bytes_limit": limit, "bytes_in_use": in_use})


def test_accelerator_batch_takes_half_the_free_memory(monkeypatch):
  monkeypatch.setattr(batching, "query_bytes", lambda *a, **k: 100 << 20)
  gib = 1 << 30
  # 10 GiB free, half of it in 100 MiB queries: 51 per device, times 4 devices.
  assert batching.auto_batch_size(CFG, 1024, 2048, [_gpu(12 * gib, 2 * gib)] * 4) == 204
  assert batching.auto_batch_size(CFG, 1024, 2048, [_gpu(gib, gib)]) == 1  # full: 1
  huge = [_gpu(10_000 * gib, 0)]
  assert batching.auto_batch_size(CFG, 1024, 2048, huge) == batching.MAX_BATCH
