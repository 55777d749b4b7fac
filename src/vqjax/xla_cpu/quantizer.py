"""The quantizer's nearest-code search in the form XLA:CPU runs fast.

`nearest_code` returns exactly `vqjax.quantizer.nearest_code(z, codebook)`
(the first minimum, the first NaN if a row has one), computed differently:

* the `[..., K]` cross term `z @ codebook.T` is kept out of the fusions around
  it, so XLA:CPU runs it in its fast matmul kernel and fuses the elementwise
  rest of the distances into the reductions;
* `jnp.argmin`'s (value, index) reduction is a scalar loop on XLA:CPU; a min,
  then a min over the indices that reach it, are two vectorised reductions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """`vqjax.quantizer.squared_distances`, the matmul behind a barrier:
  `[..., D], [K, D] -> [..., K]` float32."""
  z = z.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  z_sq = jnp.sum(z * z, axis=-1, keepdims=True)
  e_sq = jnp.sum(codebook * codebook, axis=-1)
  cross = lax.optimization_barrier(jnp.einsum(
      "...d,kd->...k", z, codebook, precision=lax.Precision.HIGHEST))
  return jnp.maximum(z_sq - 2.0 * cross + e_sq, 0.0)


def argmin_last(x: jax.Array) -> jax.Array:
  """`jnp.argmin(x, axis=-1)` (first minimum; first NaN if any) as int32,
  by two vectorised reductions."""
  num = x.shape[-1]
  lowest = jnp.min(x, axis=-1, keepdims=True)  # NaN if the row has a NaN
  hit = (x == lowest) | jnp.isnan(x)
  iota = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where(hit, iota, num), axis=-1)


def nearest_code(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the nearest code: `[..., D], [K, D] -> [...]` int32."""
  return argmin_last(squared_distances(z, codebook))
