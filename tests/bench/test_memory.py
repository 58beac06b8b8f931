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


def test_cpu_jax_contestant_reports_its_compiled_memory():
  import jax
  import jax.numpy as jnp
  f = jax.jit(lambda x: jnp.outer(x, x).sum(0))
  x = jnp.ones(1024)

  def run():
    return f(x).block_until_ready()
  run.xla_memory = lambda: f.lower(x).compile().memory_analysis()
  got, method = memory.memory_probe()("csa_jax", run)
  assert method.startswith("xla memory_analysis")
  assert got >= 4 * 1024  # at least the output; the 4 MB outer product may be fused away
  mem = f.lower(x).compile().memory_analysis()
  assert got == mem.temp_size_in_bytes + mem.output_size_in_bytes
