"""csa_jax.bench.machine: machine description and peak-memory probe."""

import json

import numpy as np

from csa_jax.bench import machine as bench_env


def test_machine_info_describes_the_host_and_is_json():
  info = bench_env.machine_info()
  for key in ("date", "cpu_model", "cpu_count", "jax_version", "jax_backend", "jax_device",
              "loadavg_start"):
    assert info[key] not in (None, ""), key
  json.dumps(info)


def test_memory_probe_sees_a_large_allocation():
  probe = bench_env.memory_probe()
  held = []

  def alloc():
    held.append(np.ones(64 * 2**20 // 4, np.float32))  # 64 MiB, touched
  peak, method = probe("torch_eager", alloc)  # a host-side contestant: the RSS path
  if method == "unavailable":  # no /proc/self/clear_refs: nothing to check
    return
  assert peak >= 60 * 2**20, (peak, method)
