"""Device mesh and sharding rules.

The mesh has two axes: `data` (pure data parallelism: parameters replicated) and `fsdp`
(data parallel too, but parameters and optimizer state are sharded over it, ZeRO-3 style).
The batch is split over both. A parameter is sharded over `fsdp` on its largest dimension
that the axis divides, if it is large enough to be worth it; otherwise it is replicated.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
MIN_SHARDED_SIZE = 2 ** 14  # smaller tensors are replicated: sharding them costs more than it saves


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[Any] | None = None):
  """A `('data', 'fsdp')` mesh. `-1` on one axis takes the remaining devices."""
  devices = list(devices) if devices is not None else jax.devices()
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError("mesh: at most one of mesh.data / mesh.fsdp may be -1")
  if data == -1:
    data = n // fsdp if fsdp and n % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = n // data if data and n % data == 0 else 0
  if data * fsdp != n or data <= 0 or fsdp <= 0:
    raise ValueError(f"mesh data={data} × fsdp={fsdp} does not match the {n} devices; "
                     "set config.mesh.data / config.mesh.fsdp (use -1 for 'the rest')")
  axis_types = (jax.sharding.AxisType.Auto,) * 2
  if devices == jax.devices():
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=axis_types)
  return jax.sharding.Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES,
                           axis_types=axis_types)


def param_spec(shape: Sequence[int], fsdp_size: int, min_size: int = MIN_SHARDED_SIZE) -> P:
  """Shard the largest dimension divisible by `fsdp_size` (ties: the last), else replicate.
  Tensors with fewer than `min_size` elements are replicated."""
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < max(min_size, 1):
    return P()
  best = None
  for dim, size in enumerate(shape):
    if size % fsdp_size == 0 and (best is None or size >= shape[best]):
      best = dim
  if best is None:
    return P()
  spec = [None] * len(shape)
  spec[best] = "fsdp"
  return P(*spec)


def tree_shardings(mesh, tree, min_size: int = MIN_SHARDED_SIZE) -> Any:
  """`NamedSharding`s for every array (or ShapeDtypeStruct) leaf of `tree`."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), fsdp, min_size)),
                      tree)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, ndim: int = 1) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def num_batch_shards(mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
