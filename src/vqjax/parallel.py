"""The one place where vqjax goes data-parallel.

Every train/eval step in vqjax is written for one device, with collectives over
the axis named `AXIS` (`lax.pmean`/`psum`). This module maps such a step over all
local devices and moves batches onto them. Swapping `jax.pmap` for
`jax.shard_map` later means editing this file only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from vqjax.configs import ConfigError

AXIS = "batch"


def data_parallel(step: Callable, donate_state: bool = True, **pmap_kwargs) -> Callable:
  """Maps `step(state, batch, ...)` over local devices along axis `AXIS`.

  The state argument (position 0) is donated by default, so a step updates its
  replicated state in place.
  """
  donate = (0,) if donate_state else ()
  return jax.pmap(step, axis_name=AXIS, donate_argnums=donate, **pmap_kwargs)


def check_divisible(global_batch_size: int) -> int:
  """Returns the per-process batch size, or raises a clear error."""
  processes = jax.process_count()
  devices = jax.device_count()
  if global_batch_size < 1 or global_batch_size % devices:
    raise ConfigError(
        f"Global batch size {global_batch_size} is not divisible by the "
        f"{devices} devices; set --config.train.batch_size to a multiple of "
        f"{devices}.")
  return global_batch_size // processes


def round_up_to_devices(batch_size: int) -> int:
  """The smallest multiple of the global device count that is >= batch_size
  (for batches whose padding is masked out, such as evaluation's)."""
  devices = jax.device_count()
  return -(-max(batch_size, 1) // devices) * devices


def replicate(tree: Any) -> Any:
  """Copies a pytree onto every local device: leaves gain a leading [D] axis.

  Placed as `pmap` places its outputs (sharded over a mesh whose axis is
  `AXIS`), so the first step compiles the same program as every later one.
  """
  devices = jax.local_devices()
  sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array(devices), (AXIS,)),
      jax.sharding.PartitionSpec(AXIS))

  def put(x):
    x = np.asarray(x)
    return jax.device_put(np.broadcast_to(x, (len(devices),) + x.shape),
                          sharding)

  return jax.tree_util.tree_map(put, tree)


def unreplicate(tree: Any) -> Any:
  """Takes the first local device's copy of a replicated (or pmapped) pytree,
  as host arrays: leaves lose their leading [D] axis."""

  def first(x):
    if isinstance(x, jax.Array):
      # Each shard of a pmapped array is [1, ...]; reading one shard avoids
      # gathering all D copies (flax's unreplicate mis-shapes 1-device pmaps).
      return np.asarray(x.addressable_shards[0].data)[0]
    return np.asarray(x)[0]

  return jax.tree_util.tree_map(first, tree)


def shard(batch: Any) -> Any:
  """Reshapes host arrays `[B, ...]` to `[D, B // D, ...]` for `D` local devices."""
  devices = jax.local_device_count()

  def _shard(x):
    x = np.asarray(x)
    if x.shape[0] % devices:
      raise ConfigError(
          f"A batch of {x.shape[0]} examples cannot be split over {devices} "
          f"local devices; use a batch size that is a multiple of {devices}.")
    return x.reshape((devices, x.shape[0] // devices) + x.shape[1:])

  return jax.tree_util.tree_map(_shard, batch)


__all__ = [
    "AXIS", "data_parallel", "check_divisible", "round_up_to_devices",
    "replicate", "unreplicate",
    "shard",
]
