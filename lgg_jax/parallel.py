"""The device mesh and global batches: pmap semantics over every device.

One 1-D mesh named `AXIS` over all devices of all processes. Each process
feeds its own rows of a global batch; results come back to every process.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"  # the axis gradients, metrics and BatchNorm statistics are averaged over


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """Each process's devices as one block, in process order (a stable sort:
  jax's order within a process is kept): `local_rows` gives process p the
  p-th block of rows, and `to_host` reads rows back in mesh order."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.array(sorted(devices, key=lambda d: d.process_index)), (AXIS,))


def replicate(tree, mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def global_batch(local: dict, mesh) -> dict:
  """This process's rows of each array, assembled into global arrays split over `AXIS`."""
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def local_rows(global_size: int) -> slice:
  """The rows of a global batch this process feeds (contiguous, as `global_batch` expects)."""
  local = global_size // jax.process_count()
  return slice(jax.process_index() * local, (jax.process_index() + 1) * local)


def to_host(tree):
  """Every process gets the whole of each (batch-split) array as numpy."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
