"""The one place where vqjax goes data-parallel.

Every train/eval step in vqjax is written for one device, with collectives over
the axis named `AXIS` (`lax.pmean`/`psum`). This module maps such a step over all
local devices and moves batches onto them. Swapping `jax.pmap` for
`jax.shard_map` later means editing this file only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from flax import jax_utils

from vqjax.configs import ConfigError

AXIS = "batch"


def data_parallel(step: Callable, donate_state: bool = True, **pmap_kwargs) -> Callable:
  """Maps `step(state, batch, ...)` over local devices along axis `AXIS`.

  The state argument (position 0) is donated by default, so a step updates its
  replicated state in place.
  """
  donate = (0,) if donate_state else ()
  return jax.pmap(step, axis_name=AXIS, donate_argnums=donate, **pmap_kwargs)


_ONE_THREAD_PER_DEVICE = "--xla_cpu_multi_thread_eigen=false"


def use_cpu_cores_as_devices(requested: int = 0,
                             batch_sizes: Iterable[int] = ()) -> int:
  """Makes the CPU backend one JAX device per core; returns the device count.

  Data parallelism across cores (each device runs its share of the batch,
  gradients `pmean`'d) keeps both cores busy through the many small ops of a
  VQ-VAE step that one device's intra-op threads leave half idle: 634 against
  524 images/s for the MNIST VQ-VAE on 2 cores
  (`benchmarks/train_throughput.py --cpu-devices 2` vs `--cpu-devices 1`).
  The step computes the same function (`tests/test_multidevice.py`).

  With more than one device, each device's ops also run on its own thread
  (`--xla_cpu_multi_thread_eigen=false` is added to `XLA_FLAGS` unless that
  already names it): otherwise one device's op waits for a share of a thread
  pool that the other device keeps busy, and the devices drift apart before
  every all-reduce. (Measured on the MNIST VQ-VAE step: no difference on a
  quiet machine; 139 against 156 ms per step, medians of three paired runs,
  while other tenants loaded it.)

  Must run before JAX creates its CPU client. Only the CPU backend is
  affected (on a GPU or TPU host the accelerators stay the devices). Leaves
  the count alone (returning 0) if `--xla_force_host_platform_device_count`
  or `JAX_NUM_CPU_DEVICES` already sets it, or if the backends are already up.

  Args:
    requested: devices wanted; 0 means one per CPU core available to the
      process, reduced to the largest count that divides every batch size.
    batch_sizes: global batch sizes the devices must divide (used when
      `requested` is 0).
  """
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or "JAX_NUM_CPU_DEVICES" in os.environ):
    return 0
  count = requested
  if count <= 0:
    count = len(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity") else (os.cpu_count() or 1)
    while count > 1 and any(size % count for size in batch_sizes):
      count -= 1
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # JAX refuses once its backends are up.
    return 0
  flags = os.environ.get("XLA_FLAGS", "")
  if count > 1 and "xla_cpu_multi_thread_eigen" not in flags:
    # Read by XLA when the CPU client starts, which has not happened yet.
    os.environ["XLA_FLAGS"] = f"{flags} {_ONE_THREAD_PER_DEVICE}".strip()
  return count


def local_device_count() -> int:
  return jax.local_device_count()


def check_divisible(global_batch_size: int) -> int:
  """Returns the per-process batch size, or raises a clear error."""
  processes = jax.process_count()
  devices = jax.device_count()
  if global_batch_size % devices:
    raise ConfigError(
        f"Global batch size {global_batch_size} is not divisible by the "
        f"{devices} devices; set --config.train.batch_size to a multiple of "
        f"{devices}.")
  return global_batch_size // processes


def replicate(tree: Any) -> Any:
  """Copies a pytree onto every local device: leaves gain a leading [D] axis."""
  return jax_utils.replicate(tree)


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


def prefetch_to_devices(batches: Iterable[Any], size: int = 2) -> Iterator[Any]:
  """Shards host batches and keeps `size` of them in flight on the devices."""
  return jax_utils.prefetch_to_device(map(shard, batches), size)


def metrics_to_host(metrics: Any) -> dict[str, float]:
  """Device 0's copy of (already pmean'd) metrics as Python floats."""
  return {k: float(v) for k, v in unreplicate(metrics).items()}


__all__ = [
    "AXIS", "data_parallel", "use_cpu_cores_as_devices", "local_device_count",
    "check_divisible", "replicate", "unreplicate", "shard", "prefetch_to_devices",
    "metrics_to_host",
]
