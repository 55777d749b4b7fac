"""Process-wide settings that make jitted steps faster on XLA:CPU.

They must be made before JAX starts its CPU client (the first array or jit)
and only make sense when the CPU is the backend that trains; `configure`
checks both and does nothing otherwise, so a GPU or TPU run is never touched.

* **Freed memory stays mapped.** XLA:CPU allocates each executable's
  temporaries with `posix_memalign` from one of its worker threads and frees
  them when the step ends. glibc serves so large a request from a worker
  thread's arena with a fresh `mmap` and returns it with `munmap`, so every
  step would page-fault its whole working set in again. Sending every thread
  to the main arena, which never maps large blocks on its own
  (`M_MMAP_MAX = 0`) and keeps freed memory (`M_TRIM_THRESHOLD`), lets the
  next step reuse the same pages. The cost: memory freed by the process stays
  mapped to it. Equivalent to starting Python with `MALLOC_ARENA_MAX=1
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`.
* **One JAX device per core.** Data parallelism across cores (each device
  runs its share of the batch, gradients `pmean`'d) keeps every core busy
  through the many small ops of a step that one device's intra-op threads
  leave partly idle. The step computes the same function
  (`tests/test_multidevice.py`).
* **One thread per device.** With more than one device, each device's ops run
  on its own thread (`--xla_cpu_multi_thread_eigen=false`): otherwise one
  device's op waits for a share of a thread pool that another keeps busy.

`README.md` has the measurements behind each.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Iterable

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
MALLOC_OPT_OUT = "VQJAX_DEFAULT_MALLOC"
_ONE_THREAD_PER_DEVICE = "--xla_cpu_multi_thread_eigen=false"


def _accelerator_plugin_installed() -> bool:
  """Whether JAX would find a GPU/TPU plugin (then it prefers that backend)."""
  try:
    if importlib.metadata.entry_points(group="jax_plugins"):
      return True
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
    if any(True for _ in pkgutil.iter_modules(jax_plugins.__path__)):
      return True
  except ImportError:
    pass
  return any(importlib.util.find_spec(name) is not None
             for name in ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin",
                          "jax_rocm7_plugin", "jax_rocm60_plugin"))


def backend_will_be_cpu() -> bool:
  """Whether JAX's default backend will be the CPU, decided before JAX starts.

  `JAX_PLATFORMS` (or `jax.config.jax_platforms`) decides when set; otherwise
  JAX takes an accelerator whenever a plugin for one is installed, so the
  answer is False as soon as one is.
  """
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if not platforms and "jax" in sys.modules:
    platforms = sys.modules["jax"].config.jax_platforms or ""
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not _accelerator_plugin_installed()


def reuse_freed_memory() -> bool:
  """Configures glibc malloc as the module docstring says; returns whether it did.

  A no-op (returning False) off Linux/glibc, when the user set any of the
  `MALLOC_*` variables above, or with `VQJAX_DEFAULT_MALLOC=1`.
  """
  if not sys.platform.startswith("linux") or os.environ.get(MALLOC_OPT_OUT) == "1":
    return False
  if any(name in os.environ for name in
         ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl)
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return bool(mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0) and
              mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def use_cpu_cores_as_devices(requested: int = 0,
                             batch_sizes: Iterable[int] = ()) -> int:
  """Makes the CPU backend one JAX device per core; returns the device count.

  With more than one device, also one thread per device (see the module
  docstring), unless `XLA_FLAGS` already names `xla_cpu_multi_thread_eigen`.
  Leaves the count alone (returning 0) if `--xla_force_host_platform_device_count`
  or `JAX_NUM_CPU_DEVICES` already sets it, or if JAX's backends are up.

  Args:
    requested: devices wanted; 0 means one per CPU core available to the
      process, reduced to the largest count that divides every batch size.
    batch_sizes: global batch sizes the devices must divide (used when
      `requested` is 0).
  """
  import jax  # pylint: disable=g-import-not-at-top
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


def configure(devices: int | None = 0,
              batch_sizes: Iterable[int] = ()) -> dict[str, object]:
  """All of the above, when the CPU will be the backend; nothing otherwise.

  Args:
    devices: as `use_cpu_cores_as_devices(requested=...)`; None leaves the
      device count alone (one CPU device).
    batch_sizes: global batch sizes the devices must divide.

  Returns:
    What was done: `{"cpu": bool, "malloc": bool, "devices": int}`.
  """
  if not backend_will_be_cpu():
    return {"cpu": False, "malloc": False, "devices": 0}
  malloc = reuse_freed_memory()
  count = (use_cpu_cores_as_devices(devices, batch_sizes)
           if devices is not None else 0)
  return {"cpu": True, "malloc": malloc, "devices": count}


__all__ = ["backend_will_be_cpu", "configure", "reuse_freed_memory",
           "use_cpu_cores_as_devices"]
