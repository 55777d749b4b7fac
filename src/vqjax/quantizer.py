"""Vector quantisation as plain, jit-able functions (no Flax).

The maths of the VQ-VAE bottleneck (van den Oord et al. 2017), usable from any
JAX model:

  z_e  [..., D]  encoder output        codebook  [K, D]
  indices = nearest_code(z_e, codebook)                  [...] int32
  z_q     = lookup(indices, codebook)                    [..., D]
  z_st    = straight_through(z_e, z_q)   # forward z_q, gradient to z_e
  loss    = codebook_loss(z_e, z_q) + commitment_loss(z_e, z_q, beta)

With the EMA variant the codebook is not learnt by gradient: `ema_update` moves
it towards the mean of the encoder outputs assigned to each code (Sonnet's
`VectorQuantizerEMA`), and `restart_dead_codes` re-seeds codes nobody uses.

Every function that summarises a batch takes an optional `axis_name`: inside
`pmap`/`shard_map` the statistics are `psum`'d so N devices compute exactly what
one device would on the global batch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Squared Euclidean distances from every vector to every code.

  Args:
    z: [..., D] vectors.
    codebook: [K, D] codes.

  Returns:
    [..., K] float32 distances `||z - e_k||^2`, computed in float32 whatever
    the input dtype.
  """
  z = z.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  z_sq = jnp.sum(z * z, axis=-1, keepdims=True)
  e_sq = jnp.sum(codebook * codebook, axis=-1)
  cross = jnp.einsum("...d,kd->...k", z, codebook,
                     precision=lax.Precision.HIGHEST)
  return jnp.maximum(z_sq - 2.0 * cross + e_sq, 0.0)


def nearest_code(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the nearest code: [..., D] -> [...] int32."""
  return jnp.argmin(squared_distances(z, codebook), axis=-1).astype(jnp.int32)


def lookup(indices: jax.Array, codebook: jax.Array) -> jax.Array:
  """Codes for indices: [...] int -> [..., D]."""
  return jnp.take(codebook, indices, axis=0)


def straight_through(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
  """Forward value `z_q`; gradient passed to `z_e` unchanged. [..., D]."""
  return z_e + lax.stop_gradient(z_q - z_e)


def codebook_loss(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
  """`mean ||sg[z_e] - z_q||^2`: moves the codes towards the encoder outputs.

  The mean runs over every element of `[..., D]` (as Sonnet/Haiku do).
  """
  return jnp.mean(jnp.square(lax.stop_gradient(z_e) - z_q))


def commitment_loss(z_e: jax.Array, z_q: jax.Array,
                    beta: float | jax.Array = 0.25) -> jax.Array:
  """`beta * mean ||z_e - sg[z_q]||^2`: keeps the encoder near its codes."""
  return beta * jnp.mean(jnp.square(z_e - lax.stop_gradient(z_q)))


def _sum_by_code(values: jax.Array, indices: jax.Array,
                 num_codes: int) -> jax.Array:
  """`sum_n one_hot(indices[n], K)[:, None] * values[n]`, by a scatter-add.

  Args:
    values: [N] or [N, D] float32, one row per index.
    indices: [...] int with N elements in all; out-of-range indices
      contribute nothing (as rows of `jax.nn.one_hot` are then all zero).
    num_codes: K.

  Returns:
    [K] or [K, D] float32. A one-hot matmul costs N * K * D multiply-adds
    (and a slow transposed matmul on XLA:CPU); this is N * D adds.
  """
  flat = indices.reshape(-1)
  valid = (flat >= 0) & (flat < num_codes)
  values = jnp.where(valid.reshape((-1,) + (1,) * (values.ndim - 1)), values,
                     0.0)
  return jax.ops.segment_sum(values, jnp.where(valid, flat, 0), num_codes)


def code_counts(indices: jax.Array, num_codes: int,
                weights: jax.Array | None = None,
                axis_name: str | None = None) -> jax.Array:
  """How often each code is used: [...] int -> [K] float32.

  `weights` ([...] float, optional) masks out padding. With `axis_name`, counts
  are summed over all devices (the global batch).
  """
  if weights is None:
    weights = jnp.ones(indices.shape, jnp.float32)
  counts = _sum_by_code(weights.reshape(-1).astype(jnp.float32), indices,
                        num_codes)
  if axis_name is not None:
    counts = lax.psum(counts, axis_name)
  return counts


def perplexity(counts: jax.Array) -> jax.Array:
  """`exp(entropy)` of the code-usage distribution: [K] -> scalar in [1, K]."""
  probs = counts / jnp.maximum(jnp.sum(counts), 1e-10)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(probs), 0.0))
  return jnp.exp(entropy)


def fraction_used(counts: jax.Array) -> jax.Array:
  """Fraction of codes used at least once: [K] -> scalar in [0, 1]."""
  return jnp.mean((counts > 0).astype(jnp.float32))


def usage_stats(indices: jax.Array, num_codes: int,
                axis_name: str | None = None) -> dict[str, jax.Array]:
  """Perplexity and fraction of codes used over the (global) batch."""
  counts = code_counts(indices, num_codes, axis_name=axis_name)
  return {"perplexity": perplexity(counts), "codes_used": fraction_used(counts)}


class EMAState(NamedTuple):
  """Exponential moving averages behind an EMA codebook (all float32).

  Attributes:
    codebook: [K, D] the codes, `embed_sum / smoothed(cluster_size)`.
    cluster_size: [K] biased EMA of how many vectors each code was assigned.
    embed_sum: [K, D] biased EMA of the sum of vectors assigned to each code.
    count: [] number of updates so far, for zero-debiasing.
  """
  codebook: jax.Array
  cluster_size: jax.Array
  embed_sum: jax.Array
  count: jax.Array


def ema_init(codebook: jax.Array) -> EMAState:
  """EMA state for an initial codebook [K, D]: zero averages, zero count."""
  codebook = jnp.asarray(codebook, jnp.float32)
  return EMAState(codebook=codebook,
                  cluster_size=jnp.zeros(codebook.shape[:1], jnp.float32),
                  embed_sum=jnp.zeros_like(codebook),
                  count=jnp.zeros((), jnp.int32))


def _debiased(hidden: jax.Array, decay: float, count: jax.Array) -> jax.Array:
  return hidden / (1.0 - jnp.power(jnp.float32(decay), count.astype(jnp.float32)))


def ema_cluster_size(state: EMAState, decay: float) -> jax.Array:
  """Zero-debiased EMA usage of each code: [K]. Zero before the first update."""
  return jnp.where(state.count > 0, _debiased(state.cluster_size, decay,
                                              jnp.maximum(state.count, 1)), 0.0)


def ema_update(state: EMAState, z: jax.Array, indices: jax.Array,
               decay: float = 0.99, epsilon: float = 1e-5,
               axis_name: str | None = None) -> EMAState:
  """One EMA codebook step with Sonnet/Haiku `VectorQuantizerEMA` semantics.

  `n_k` and `sum_k` (counts and sums of the vectors assigned to code k over the
  global batch) enter zero-debiased moving averages; the cluster sizes are
  Laplace-smoothed, `(N_k + eps) / (N + K eps) * N`, so an unused code never
  divides by zero; the new codebook is `EMA(sum_k) / smoothed(EMA(n_k))`.

  Args:
    state: current EMAState.
    z: [..., D] encoder outputs (the gradient is stopped).
    indices: [...] int codes assigned to `z`.
    decay: EMA decay in [0, 1).
    epsilon: Laplace smoothing constant.
    axis_name: if given, counts and sums are `psum`'d over this axis.

  Returns:
    The updated EMAState.
  """
  num_codes, dim = state.codebook.shape
  z = lax.stop_gradient(z).reshape(-1, dim).astype(jnp.float32)
  counts = _sum_by_code(jnp.ones(z.shape[:1], jnp.float32), indices,
                        num_codes)
  sums = _sum_by_code(z, indices, num_codes)
  if axis_name is not None:
    counts, sums = lax.psum((counts, sums), axis_name)

  count = state.count + 1
  cluster_size = decay * state.cluster_size + (1.0 - decay) * counts
  embed_sum = decay * state.embed_sum + (1.0 - decay) * sums
  debiased_size = _debiased(cluster_size, decay, count)
  debiased_sum = _debiased(embed_sum, decay, count)
  total = jnp.sum(debiased_size)
  smoothed = (debiased_size + epsilon) / (total + num_codes * epsilon) * total
  codebook = debiased_sum / smoothed[:, None]
  return EMAState(codebook=codebook, cluster_size=cluster_size,
                  embed_sum=embed_sum, count=count)


def _gather_global(z: jax.Array, axis_name: str | None) -> jax.Array:
  """[N_local, D] -> [N_global, D], the same on every device."""
  if axis_name is None:
    return z
  return lax.all_gather(z, axis_name, tiled=True)


def _draw_global(z: jax.Array, key: jax.Array, num: int,
                 axis_name: str | None) -> jax.Array:
  """`num` rows drawn uniformly, with replacement, from the global batch.

  `[N_local, D] -> [num, D]`, the same on every device: exactly the rows
  `all_gather(z)[picks]` for global picks drawn with `key`, but each device
  contributes only the rows it holds to a `psum` of `[num, D]` instead of
  gathering the whole batch (which on CPU costs a separate synchronisation of
  all devices mid-step; the `psum` joins the step's other all-reduces).
  """
  n_local = z.shape[0]
  if axis_name is None:
    return z[jax.random.randint(key, (num,), 0, n_local)]
  num_devices = lax.psum(1, axis_name)
  picks = jax.random.randint(key, (num,), 0, n_local * num_devices)
  held_here = picks // n_local == lax.axis_index(axis_name)
  rows = jnp.where(held_here[:, None], z[picks % n_local], 0.0)
  return lax.psum(rows, axis_name)


def restart_dead_codes(state: EMAState, z: jax.Array, key: jax.Array,
                       threshold: float = 1.0, decay: float = 0.99,
                       axis_name: str | None = None) -> tuple[EMAState, jax.Array]:
  """Re-seeds codes whose EMA usage fell below `threshold` from encoder outputs.

  Each dead code becomes a vector drawn uniformly (with replacement) from the
  global batch `z`; its EMA statistics restart as if it had been assigned that
  vector `threshold` times, so it is not declared dead again at once. `key` must
  be the same on every device; with `axis_name` every device makes the same
  choice from the global batch (see `_draw_global`). Nothing happens before
  the first EMA update (`state.count == 0`).

  Args:
    state: EMAState after `ema_update`.
    z: [..., D] encoder outputs of the current (local) batch.
    key: PRNG key, identical across devices.
    threshold: codes with debiased EMA usage below this are dead.
    decay: the EMA decay used by `ema_update` (for debiasing).
    axis_name: data-parallel axis, if any.

  Returns:
    (new state, [K] bool mask of the codes that were restarted).
  """
  num_codes, dim = state.codebook.shape
  z = lax.stop_gradient(z).reshape(-1, dim).astype(jnp.float32)
  usage = ema_cluster_size(state, decay)
  dead = (usage < threshold) & (state.count > 0)
  fresh = _draw_global(z, key, num_codes, axis_name)
  codebook = jnp.where(dead[:, None], fresh, state.codebook)
  # Store biased values whose debiased reading is `threshold` (and its sum).
  bias = 1.0 - jnp.power(jnp.float32(decay),
                         jnp.maximum(state.count, 1).astype(jnp.float32))
  cluster_size = jnp.where(dead, threshold * bias, state.cluster_size)
  embed_sum = jnp.where(dead[:, None], fresh * threshold * bias,
                        state.embed_sum)
  return state._replace(codebook=codebook, cluster_size=cluster_size,
                        embed_sum=embed_sum), dead


def kmeans(z: jax.Array, num_codes: int, key: jax.Array, num_iters: int = 10,
           axis_name: str | None = None) -> jax.Array:
  """Lloyd's k-means on a batch of vectors, for initialising a codebook.

  Centres start at distinct random vectors of the (global) batch; a centre
  that loses all its points keeps its previous position.

  Args:
    z: [..., D] vectors (local batch; gathered over `axis_name` if given).
    num_codes: K.
    key: PRNG key, identical across devices.
    num_iters: Lloyd iterations.
    axis_name: data-parallel axis, if any.

  Returns:
    [K, D] float32 centres.
  """
  dim = z.shape[-1]
  z = _gather_global(z.reshape(-1, dim).astype(jnp.float32), axis_name)
  n = z.shape[0]
  picks = jax.random.choice(key, n, (num_codes,), replace=n < num_codes)
  centres = z[picks]

  def step(_, centres):
    assign = jax.nn.one_hot(nearest_code(z, centres), num_codes,
                            dtype=jnp.float32)
    counts = jnp.sum(assign, axis=0)
    sums = jnp.einsum("nk,nd->kd", assign, z, precision=lax.Precision.HIGHEST)
    return jnp.where(counts[:, None] > 0,
                     sums / jnp.maximum(counts, 1.0)[:, None], centres)

  return lax.fori_loop(0, num_iters, step, centres)


def quantize(z_e: jax.Array, codebook: jax.Array,
             beta: float = 0.25) -> dict[str, jax.Array]:
  """Nearest-code quantisation with both loss terms, in one call.

  Args:
    z_e: [..., D] encoder outputs.
    codebook: [K, D].
    beta: commitment cost.

  Returns:
    dict with `quantized` ([..., D], straight-through), `indices` ([...]),
    `codebook_loss`, `commitment_loss` (scalars).
  """
  indices = nearest_code(z_e, codebook)
  z_q = lookup(indices, codebook)
  return {
      "quantized": straight_through(z_e, z_q),
      "indices": indices,
      "codebook_loss": codebook_loss(z_e, z_q),
      "commitment_loss": commitment_loss(z_e, z_q, beta),
  }
