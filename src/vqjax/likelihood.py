"""The discrete likelihood of 8-bit pixels that every stage-1 model shares.

A decoder's output `mean` (on the `[-0.5, 0.5]` scale of
`vqjax.models.to_float`) and a per-channel scale define a discretised
Gaussian over the 256 pixel values: bin `k` covers `x_k -/+ 1/510` with
`x_k = k / 255 - 0.5`, and the two end bins take the tails (as PixelCNN++'s
discretised logistic does). It sums to one over the 256 values, so
`-log2 p(x | z)` plus the code cost (`log2 K` a latent under uniform codes, a
prior's NLL, or a VAE's KL) is a bound on bits per dimension that compares the
AE, VAE, VQ-VAE and VQ-VAE-2 on the same data.

The scale is `sqrt` of a mean squared error (the Gaussian's maximum
likelihood for a given mean, as in Rybkin et al. 2021, "Simple and Effective
VAE Training with Calibrated Decoders").
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NUM_BINS = 256
HALF_BIN = 0.5 / (NUM_BINS - 1)
MIN_VARIANCE = 1e-6  # Keeps the scale above ~1/4 of a bin.


def _log_normal_cdf(x: jax.Array) -> jax.Array:
  return jax.scipy.special.log_ndtr(x)


def discretized_gaussian_log_prob(x: jax.Array, mean: jax.Array,
                                  variance: jax.Array) -> jax.Array:
  """`log p(x)` of 8-bit values under a Gaussian discretised to 256 bins.

  Args:
    x: `[...]` pixel values on the `[-0.5, 0.5]` scale (`k / 255 - 0.5`).
    mean: `[...]` the decoder's output, same scale (any real value).
    variance: broadcastable to `x`, > 0 (e.g. `[C]` per channel).

  Returns:
    `[...]` float32 log-probabilities in nats (<= 0).
  """
  x = x.astype(jnp.float32)
  inv_scale = jax.lax.rsqrt(jnp.maximum(variance, MIN_VARIANCE))
  upper = (x - mean + HALF_BIN) * inv_scale
  lower = (x - mean - HALF_BIN) * inv_scale
  # log(Phi(u) - Phi(l)) computed on the side of the mean where it does not
  # cancel: by symmetry Phi(u) - Phi(l) = Phi(-l) - Phi(-u).
  flip = (upper + lower) > 0
  hi = jnp.where(flip, -lower, upper)
  lo = jnp.where(flip, -upper, lower)
  log_hi = _log_normal_cdf(hi)
  interior = log_hi + jnp.log(-jnp.expm1(_log_normal_cdf(lo) - log_hi) + 1e-30)
  bottom = _log_normal_cdf(upper)  # P(X <= x_0 + half bin)
  top = _log_normal_cdf(-lower)    # P(X >  x_255 - half bin)
  return jnp.where(x < -0.5 + HALF_BIN, bottom,
                   jnp.where(x > 0.5 - HALF_BIN, top, interior))


def bits_per_dim(nats: jax.Array | float, num_dims: int) -> jax.Array | float:
  """Nats per example -> bits per dimension."""
  return nats / (num_dims * math.log(2.0))
