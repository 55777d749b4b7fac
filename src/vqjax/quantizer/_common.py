"""Shared pieces: argument checks at trace time, keyed NamedTuples.

Every public function checks its arguments when it is traced (shapes and
dtypes are static; numbers such as `decay` are checked when they are known,
i.e. Python numbers or concrete arrays) and raises a ValueError that names
the function and the argument. Nothing here runs on the device.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

GRADIENTS = ("straight_through", "rotation")


def concrete_float(value: Any) -> float | None:
  """`value` as a Python float when it is known at trace time, else None."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def check_range(fn: str, name: str, value: Any, low: float | None = None,
                high: float | None = None, low_open: bool = False,
                high_open: bool = False) -> None:
  """Raises if a known `value` lies outside [low, high] (or an open side)."""
  number = concrete_float(value)
  if number is None:
    if np.ndim(value) != 0:
      raise ValueError(f"{fn}: {name} must be a scalar; got shape "
                       f"{np.shape(value)}.")
    return
  below = low is not None and (number <= low if low_open else number < low)
  above = high is not None and (number >= high if high_open else number > high)
  if below or above or np.isnan(number):
    lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
    hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
    raise ValueError(f"{fn}: {name} must satisfy {lo}{name}{hi}; got {number}.")


def check_floating(fn: str, name: str, x: Any) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{fn}: {name} must be a floating-point array; got "
                     f"dtype {dtype}.")


def check_integer(fn: str, name: str, x: Any) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"{fn}: {name} must be an integer array (code indices); "
                     f"got dtype {dtype}.")


def check_vectors(fn: str, name: str, z: Any) -> None:
  """`z` must be a floating `[..., D]` array with D >= 1."""
  check_floating(fn, name, z)
  if np.ndim(z) < 1 or np.shape(z)[-1] < 1:
    raise ValueError(f"{fn}: {name} must be [..., D] with D >= 1; got shape "
                     f"{np.shape(z)}.")


def check_codebook(fn: str, codebook: Any, z: Any, name: str = "codebook",
                   z_name: str = "z") -> None:
  """`codebook` must be a floating `[K, D]` with D = z.shape[-1]."""
  shape = np.shape(codebook)
  if len(shape) != 2 or shape[0] < 1:
    raise ValueError(f"{fn}: {name} must be [K, D] with K >= 1; got shape "
                     f"{shape}.")
  check_floating(fn, name, codebook)
  if shape[1] != np.shape(z)[-1]:
    raise ValueError(
        f"{fn}: {name} must be [K, D] with D = {z_name}.shape[-1] = "
        f"{np.shape(z)[-1]}; got {name} shape {shape} for {z_name} shape "
        f"{np.shape(z)}.")


def check_indices(fn: str, indices: Any, batch_shape: tuple[int, ...],
                  name: str = "indices", z_name: str = "z") -> None:
  """Integer indices of shape `z.shape[:-1]`."""
  check_integer(fn, name, indices)
  if tuple(np.shape(indices)) != tuple(batch_shape):
    raise ValueError(
        f"{fn}: {name} must have shape {z_name}.shape[:-1] = "
        f"{tuple(batch_shape)}; got {tuple(np.shape(indices))}.")


def check_gradient(fn: str, gradient: str) -> None:
  if gradient not in GRADIENTS:
    raise ValueError(f"{fn}: gradient must be one of {GRADIENTS}; got "
                     f"{gradient!r}.")


def check_axis_name(fn: str, axis_name: Any) -> None:
  if axis_name is not None and not isinstance(axis_name, (str, tuple)):
    raise ValueError(f"{fn}: axis_name must be None or the name of a mapped "
                     f"axis (a str); got {axis_name!r}.")


def keyed(cls):
  """Lets a NamedTuple also be read like the dict it replaces.

  `out["loss"]` is `out.loss`; `keys()`, `items()`, `get()` and `"loss" in out`
  work as on a dict (so `dict(out)` and `**out` do too). Integer indexing,
  slicing and unpacking stay those of the tuple; iterating yields values.
  """
  def __getitem__(self, key):
    if isinstance(key, str):
      if key not in self._fields:
        raise KeyError(f"{type(self).__name__} has no field {key!r}; fields: "
                       f"{self._fields}")
      return getattr(self, key)
    return tuple.__getitem__(self, key)

  def __contains__(self, key):
    if isinstance(key, str):
      return key in self._fields
    return tuple.__contains__(self, key)

  def keys(self):
    return self._fields

  def items(self):
    return tuple(zip(self._fields, self))

  def get(self, key, default=None):
    return getattr(self, key) if key in self._fields else default

  for name, method in (("__getitem__", __getitem__),
                       ("__contains__", __contains__), ("keys", keys),
                       ("items", items), ("get", get)):
    method.__qualname__ = f"{cls.__name__}.{name}"
    setattr(cls, name, method)
  return cls

