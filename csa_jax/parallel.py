"""Device layout: the one data-parallel mesh, its shardings, and multi-process start-up.

Everything csa_jax shards (training batches, database blocks in the search, query batches in
re-ranking) is split along one mesh axis, ``DATA_AXIS``; everything else (parameters, optimizer
state, the training descriptors) is replicated. A multi-process run calls ``init_distributed``
first, before anything touches a JAX backend; the mesh then spans the devices of every process.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from csa_jax.errors import InputError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh whose one axis, ``DATA_AXIS``, runs over ``devices`` in the order given.

  Args:
    devices: the devices to span, e.g. ``jax.devices()[:n]`` or ``jax.local_devices()``;
      default every device of every process.

  Returns:
    A ``Mesh`` of shape ``{DATA_AXIS: len(devices)}``.
  """
  devices = jax.devices() if devices is None else list(devices)
  # Auto, not make_mesh's default Explicit: XLA propagates the shardings the jitted functions
  # declare, and array types carry no sharding (the programs stay those of a plain Mesh).
  return jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device of ``mesh`` holds the whole array."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading axis split evenly over ``DATA_AXIS``; the other axes whole on every device."""
  return NamedSharding(mesh, P(DATA_AXIS))


def put_replicated(tree, mesh: Mesh):
  """Host values, identical on every process, as arrays replicated over ``mesh``.

  Args:
    tree: a pytree of arrays (numpy, or jax arrays, which are fetched to the host first).
    mesh: the mesh to replicate over; it may span devices of other processes.

  Returns:
    The same pytree of ``jax.Array`` with ``replicated(mesh)`` sharding.
  """
  sharding = replicated(mesh)

  # make_array_from_callback, not device_put: each process fills only its own devices, so it
  # also works when the mesh spans other processes.
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, jax.device_get(tree))


def init_distributed(coordinator: str | None, num_processes: int | None,
                     process_id: int | None, auto: bool = False) -> bool:
  """Starts ``jax.distributed`` for a multi-process run; must come before any JAX computation.

  Args:
    coordinator: ``HOST:PORT`` of process 0; default the environment's ``JAX_COORDINATOR_ADDRESS``.
    num_processes: processes in the run; default ``JAX_NUM_PROCESSES``.
    process_id: this process's index; default ``JAX_PROCESS_ID``.
    auto: let JAX detect the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU) instead.

  Returns:
    True when ``jax.distributed`` was initialised, False for a single-process run.

  Raises:
    InputError: a multi-process run without all three of coordinator, count and index.
  """
  env = os.environ
  coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  if not (auto or coordinator or (num_processes or 1) > 1):
    return False
  if not auto and (coordinator is None or num_processes is None or process_id is None):
    raise InputError("command line: --coordinator-address/--num-processes/--process-id: "
                     "expected all three for a multi-process run, found "
                     f"{coordinator!r}/{num_processes!r}/{process_id!r}")
  # Cross-process collectives on CPU need an implementation; GPU/TPU ignore this option.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)
  return True
