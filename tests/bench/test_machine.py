"""csa_jax.bench.machine: the machine description is complete and JSON."""

import json

from csa_jax.bench import machine


def test_machine_info_describes_the_host_and_is_json():
  info = machine.machine_info()
  for key in ("date", "cpu_model", "cpu_count", "jax_version", "jax_backend", "jax_device",
              "loadavg_start"):
    assert info[key] not in (None, ""), key
  json.dumps(info)
