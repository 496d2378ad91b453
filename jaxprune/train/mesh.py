"""The device mesh: one `data` axis over every device (of every process)."""

from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxprune.errors import UserError


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named `data` over `devices` (default: all devices of all processes).

  Axis types are passed explicitly as Auto: the models rely on XLA's sharding propagation, not
  on sharding-in-types (newer JAX defaults to Explicit).
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch(batch_size: int, field: str = "train.batch_size",
                device_count: int | None = None) -> None:
  """The global batch must split evenly over devices and processes."""
  n = jax.device_count() if device_count is None else device_count
  if batch_size < 1 or batch_size % n:
    raise UserError(f"{field} = {batch_size} is not divisible by the {n} devices; use a "
                    f"multiple of {n}")
