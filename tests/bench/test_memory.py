"""csa_jax.bench.memory: the peak-memory probe sees an allocation made by the call."""

import numpy as np

from csa_jax.bench import memory


def test_memory_probe_sees_a_large_allocation():
  probe = memory.memory_probe()
  held = []

  def alloc():
    held.append(np.ones(64 * 2**20 // 4, np.float32))  # 64 MiB, touched
  peak, method = probe("torch_eager", alloc)  # a host-side contestant: the RSS path
  if method == "unavailable":  # no /proc/self/clear_refs: nothing to check
    return
  assert peak >= 60 * 2**20, (peak, method)
