"""csa_jax.parallel: the one data-parallel mesh, its shardings, and the multi-process start."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from csa_jax import parallel
from csa_jax.errors import InputError


@pytest.mark.parametrize("pick", [slice(None), slice(0, 1), slice(3, 6), slice(None, None, -1)])
def test_mesh_spans_the_given_devices_in_order(pick):
  devices = jax.devices()[pick]
  mesh = parallel.make_mesh(devices)
  assert mesh.axis_names == (parallel.DATA_AXIS,) and mesh.size == len(devices)
  assert list(mesh.devices.flat) == devices
  # Automatic axes, as a plain Mesh: shardings are XLA's to propagate, not part of the types.
  assert mesh.axis_types == (AxisType.Auto,)
  assert parallel.make_mesh().size == jax.device_count()


def test_shardings_and_put_replicated():
  mesh = parallel.make_mesh(jax.devices()[:4])
  x = np.arange(24, dtype=np.float32).reshape(8, 3)
  split = jax.device_put(x, parallel.batch_sharding(mesh))
  assert [s.data.shape for s in split.addressable_shards] == [(2, 3)] * 4
  tree = parallel.put_replicated({"a": x, "b": (np.int32(5),)}, mesh)
  assert tree["a"].sharding == parallel.replicated(mesh) and tree["a"].sharding.is_fully_replicated
  assert len(tree["a"].sharding.device_set) == 4
  np.testing.assert_array_equal(tree["a"], x)
  assert int(tree["b"][0]) == 5


def test_distributed_flags_must_come_together(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(var, raising=False)
  assert parallel.init_distributed(None, None, None) is False  # single process: nothing to do
  with pytest.raises(InputError, match="expected all three"):
    parallel.init_distributed(None, 2, None)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  with pytest.raises(InputError, match="expected all three"):
    parallel.init_distributed("127.0.0.1:1", None, None)
