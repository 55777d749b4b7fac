"""Nearest-code vector quantisation: search, gradient estimators, losses,
usage statistics and the one-call `quantize`.

References:
  van den Oord, Vinyals, Kavukcuoglu. Neural Discrete Representation
  Learning. NeurIPS 2017, arXiv:1711.00937 (VQ-VAE, straight-through, losses).
  Fifty, Junkins, Duan, Iyengar, Liu, Amid, Thrun, Ré. Restructuring Vector
  Quantization with the Rotation Trick. 2024, arXiv:2410.06424.
  Yu et al. Vector-quantized Image Modeling with Improved VQGAN. ICLR 2022,
  arXiv:2110.04627 (ViT-VQGAN: l2-normalised, low-dimensional codes).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from vqjax.quantizer import _common as C


class EMAState(NamedTuple):
  """Exponential moving averages behind an EMA codebook (all float32).

  The settings (decay, epsilon, dead-code threshold) are not stored here but
  in the `EMACodebook` returned by `ema_codebook`, whose `update` is the one
  function that should move this state.

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


def codes_of(codebook: jax.Array | EMAState) -> jax.Array:
  """The `[K, D]` codes of a codebook array or an EMAState."""
  return codebook.codebook if isinstance(codebook, EMAState) else codebook


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Squared Euclidean distances from every vector to every code.

  Args:
    z: [..., D] vectors.
    codebook: [K, D] codes.

  Returns:
    [..., K] float32 distances `||z - e_k||^2`, computed in float32 whatever
    the input dtype.

  Raises:
    ValueError: at trace time, if `codebook` is not `[K, D]` with D matching
      `z`'s last axis.
  """
  C.check_vectors("squared_distances", "z", z)
  C.check_codebook("squared_distances", codebook, z)
  z = jnp.asarray(z, jnp.float32)
  codebook = jnp.asarray(codebook, jnp.float32)
  z_sq = jnp.sum(z * z, axis=-1, keepdims=True)
  e_sq = jnp.sum(codebook * codebook, axis=-1)
  cross = jnp.einsum("...d,kd->...k", z, codebook,
                     precision=lax.Precision.HIGHEST)
  return jnp.maximum(z_sq - 2.0 * cross + e_sq, 0.0)


def nearest_code(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the nearest code: `z: [..., D]`, `codebook: [K, D]` -> [...] int32.

  Ties go to the lowest index. Raises ValueError at trace time on a codebook
  that is not `[K, D]` with D = `z.shape[-1]`.
  """
  return jnp.argmin(squared_distances(z, codebook), axis=-1).astype(jnp.int32)


def lookup(indices: jax.Array, codebook: jax.Array) -> jax.Array:
  """Codes for indices: `indices: [...]` int, `codebook: [K, D]` -> [..., D].

  Raises ValueError at trace time if `indices` is not an integer array.
  """
  C.check_integer("lookup", "indices", indices)
  return jnp.take(codebook, indices, axis=0)


def l2_normalize(x: jax.Array, axis: int = -1,
                 eps: float = 1e-12) -> jax.Array:
  """`x / max(||x||, eps)` along `axis`, in float32: [..., D] -> [..., D].

  A zero vector stays zero, with a finite gradient. Used by the cosine
  (ViT-VQGAN) codebook: inputs and codes live on the unit sphere, where the
  nearest code in Euclidean distance is the one of highest cosine similarity
  (`||a - b||^2 = 2 - 2 cos(a, b)`).
  """
  C.check_floating("l2_normalize", "x", x)
  x = jnp.asarray(x, jnp.float32)
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * lax.rsqrt(jnp.maximum(sq, jnp.float32(eps) ** 2))


def cosine_nearest_code(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Code of highest cosine similarity: `[..., D], [K, D]` -> [...] int32.

  `nearest_code(l2_normalize(z), l2_normalize(codebook))`. The projection to a
  low lookup dimension (ViT-VQGAN's factorised codes) is a matmul the caller
  (e.g. the Linen module) applies before this and undoes after `lookup`.

  References:
    Yu et al. 2022, arXiv:2110.04627, section 3.2.
  """
  return nearest_code(l2_normalize(z), l2_normalize(codebook))


def straight_through(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
  """Forward value `z_q`; gradient passed to `z_e` unchanged. [..., D].

  `z_q` receives no gradient from this path (the codebook learns from
  `codebook_loss` or by EMA).
  """
  return z_e + lax.stop_gradient(z_q - z_e)


def rotation_trick(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
  """The rotation trick: forward value exactly `z_q`, rotated gradient.

  With `e = z_e`, `q = z_q` (one vector per position) the output is
  `q~ = sg[lambda R] e`, where `lambda = ||q|| / ||e||` and `R` is the
  rotation taking `e/||e||` to `q/||q||` in the plane they span,

    R = I - 2 r r^T + 2 q^ e^^T,   r = (e^ + q^) / ||e^ + q^||,

  (e^ = e/||e||, q^ = q/||q||). `lambda` and `R` are constants
  (stop_gradient), so the gradient reaching `z_e` is

    dL/de = lambda R^T dL/dq~,

  the decoder's gradient at the code, rotated back to the encoder output's
  direction and rescaled by the ratio of norms; `z_q` gets no gradient from
  this path (the codebook learns from `codebook_loss` or by EMA), exactly as
  with `straight_through`. The output value is `z_q` bit for bit: it is
  computed as `sg[q] + (q~ - sg[q~])`.

  Computed in float32 (the output is float32). Where `e` or `q` is the zero
  vector the rotation is undefined; there the gradient falls back to
  straight-through (`lambda = 1`, `R = I`). For `e^ = -q^` (opposite
  directions) `r = 0` and `R = I + 2 q^ e^^T`, a reflection that still takes
  `e^` to `q^`.

  Args:
    z_e: [..., D] encoder outputs.
    z_q: [..., D] their codes.

  Returns:
    [..., D] float32, equal to `z_q`.

  References:
    Fifty et al. Restructuring Vector Quantization with the Rotation Trick.
    2024, arXiv:2410.06424, section 4.2 and eq. (5) (the efficient form
    `e - 2 (e.r) r + 2 (e.e^) q^` used here).
  """
  C.check_vectors("rotation_trick", "z_e", z_e)
  if jnp.shape(z_e) != jnp.shape(z_q):
    raise ValueError(f"rotation_trick: z_q must have z_e's shape "
                     f"{jnp.shape(z_e)}; got {jnp.shape(z_q)}.")
  e = jnp.asarray(z_e, jnp.float32)
  q = jnp.asarray(z_q, jnp.float32)
  sg = lax.stop_gradient
  e_norm = sg(jnp.linalg.norm(e, axis=-1, keepdims=True))
  q_norm = sg(jnp.linalg.norm(q, axis=-1, keepdims=True))
  ok = (e_norm > 0) & (q_norm > 0)
  safe = lambda n: jnp.where(n > 0, n, 1.0)
  e_hat = sg(jnp.where(ok, e, 0.0) / safe(e_norm))
  q_hat = sg(jnp.where(ok, q, 0.0) / safe(q_norm))
  r = e_hat + q_hat
  r = sg(r / safe(jnp.linalg.norm(r, axis=-1, keepdims=True)))
  scale = sg(jnp.where(ok, q_norm / safe(e_norm), 1.0))
  dot = lambda a, b: jnp.sum(a * b, axis=-1, keepdims=True)
  rotated = scale * (e - 2.0 * dot(e, r) * r + 2.0 * dot(e, e_hat) * q_hat)
  return sg(q) + (rotated - sg(rotated))


def estimator(gradient: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The gradient estimator `(z_e, z_q) -> [..., D]` called `gradient`:
  "straight_through" (`straight_through`) or "rotation" (`rotation_trick`)."""
  C.check_gradient("estimator", gradient)
  return {"straight_through": straight_through,
          "rotation": rotation_trick}[gradient]


def codebook_loss(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
  """`mean ||sg[z_e] - z_q||^2`: moves the codes towards the encoder outputs.

  The mean runs over every element of `[..., D]` (as Sonnet/Haiku do).
  """
  return jnp.mean(jnp.square(lax.stop_gradient(z_e) - z_q))


def commitment_loss(z_e: jax.Array, z_q: jax.Array,
                    beta: float | jax.Array = 0.25) -> jax.Array:
  """`beta * mean ||z_e - sg[z_q]||^2`: keeps the encoder near its codes.

  Raises ValueError at trace time if a known `beta` is negative.
  """
  C.check_range("commitment_loss", "beta", beta, low=0.0)
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


def resolve_num_codes(fn: str, num_codes: int | None,
                      codebook: Any = None) -> int:
  """K from `codebook` ([K, D] or EMAState) or `num_codes`; both must agree."""
  from_codebook = None
  if codebook is not None:
    shape = jnp.shape(codes_of(codebook))
    if len(shape) != 2:
      raise ValueError(f"{fn}: codebook must be [K, D] (or an EMAState); got "
                       f"shape {shape}.")
    from_codebook = shape[0]
  if num_codes is None:
    if from_codebook is None:
      raise ValueError(f"{fn}: pass codebook=... (K is read from it) or "
                       "num_codes=K.")
    return from_codebook
  if isinstance(num_codes, bool) or not isinstance(num_codes, int) \
      and not (hasattr(num_codes, "__index__") and jnp.ndim(num_codes) == 0):
    raise ValueError(f"{fn}: num_codes must be a positive int; got "
                     f"{num_codes!r}.")
  num_codes = int(num_codes)
  if num_codes < 1:
    raise ValueError(f"{fn}: num_codes must be >= 1; got {num_codes}.")
  if from_codebook is not None and from_codebook != num_codes:
    raise ValueError(f"{fn}: num_codes={num_codes} disagrees with the "
                     f"codebook's K = {from_codebook}; drop num_codes (it is "
                     "read from the codebook).")
  return num_codes


def code_counts(indices: jax.Array, num_codes: int | None = None,
                weights: jax.Array | None = None,
                axis_name: str | None = None, *,
                codebook: jax.Array | EMAState | None = None) -> jax.Array:
  """How often each code is used: `indices: [...]` int -> [K] float32.

  K is read from `codebook` ([K, D] or an EMAState) when given; `num_codes`
  is the old way to give it and must agree with the codebook if both are
  given. Indices outside [0, K) count nowhere (see `usage_stats`, whose
  `out_of_range` reports them). `weights` ([...] float, optional) masks out
  padding. With `axis_name`, counts are summed over all devices (the global
  batch).
  """
  fn = "code_counts"
  num_codes = resolve_num_codes(fn, num_codes, codebook)
  C.check_integer(fn, "indices", indices)
  C.check_axis_name(fn, axis_name)
  indices = jnp.asarray(indices)
  if weights is None:
    weights = jnp.ones(indices.shape, jnp.float32)
  elif jnp.shape(weights) != indices.shape:
    raise ValueError(f"{fn}: weights must have indices' shape {indices.shape};"
                     f" got {jnp.shape(weights)}.")
  counts = _sum_by_code(jnp.asarray(weights).reshape(-1).astype(jnp.float32),
                        indices, num_codes)
  if axis_name is not None:
    counts = lax.psum(counts, axis_name)
  return counts


def perplexity(counts: jax.Array) -> jax.Array:
  """`exp(entropy)` of the code-usage distribution: [K] -> scalar in [1, K].

  float32 whatever the dtype of `counts`.
  """
  counts = jnp.asarray(counts, jnp.float32)
  probs = counts / jnp.maximum(jnp.sum(counts, axis=-1, keepdims=True), 1e-10)
  logs = jnp.log(jnp.where(probs > 0, probs, 1.0))
  return jnp.exp(-jnp.sum(probs * logs, axis=-1))


def fraction_used(counts: jax.Array) -> jax.Array:
  """Fraction of codes used at least once: [K] -> scalar float32 in [0, 1]."""
  return jnp.mean((jnp.asarray(counts) > 0).astype(jnp.float32), axis=-1)


@C.keyed
class UsageStats(NamedTuple):
  """What `usage_stats` returns (readable as `stats.perplexity` or, as the
  dict it replaces, `stats["perplexity"]`).

  Attributes:
    perplexity: [] float32, `exp(entropy)` of the code usage, in [1, K].
    codes_used: [] float32, fraction of the K codes used at least once.
    counts: [K] float32, uses of each code.
    out_of_range: [] float32, (weighted) number of indices outside [0, K):
      nonzero means the indices come from a larger codebook than the K given
      (or mark dropped residual depths, -1).
  """
  perplexity: jax.Array
  codes_used: jax.Array
  counts: jax.Array
  out_of_range: jax.Array


def usage_stats(indices: jax.Array, num_codes: int | None = None,
                axis_name: str | None = None, *,
                codebook: jax.Array | EMAState | None = None,
                weights: jax.Array | None = None) -> UsageStats:
  """Perplexity and fraction of codes used over the (global) batch.

  Args:
    indices: [...] int codes.
    num_codes: K, the old way to give it; prefer `codebook`. Raises ValueError
      if both are given and disagree.
    axis_name: if given, statistics cover the global batch (`psum`).
    codebook: [K, D] or an EMAState; K is read from it.
    weights: optional [...] float mask/weights.

  Returns:
    UsageStats(perplexity, codes_used, counts, out_of_range), float32.
  """
  fn = "usage_stats"
  num_codes = resolve_num_codes(fn, num_codes, codebook)
  counts = code_counts(indices, num_codes, weights, axis_name)
  if weights is None:
    total = jnp.float32(jnp.size(indices))
    if axis_name is not None:
      total = lax.psum(total, axis_name)
  else:
    total = jnp.sum(jnp.asarray(weights, jnp.float32))
    if axis_name is not None:
      total = lax.psum(total, axis_name)
  return UsageStats(perplexity=perplexity(counts),
                    codes_used=fraction_used(counts), counts=counts,
                    out_of_range=total - jnp.sum(counts))


@C.keyed
class QuantizeOutput(NamedTuple):
  """What the VQ quantizers return (`quantize`, `grouped_quantize`; the first
  six fields of `residual_quantize`'s output). All floats are float32.

  Readable as attributes or, as the dict `quantize` used to return, by key
  (`out["indices"]`).

  Attributes:
    quantized: [..., D] the codes, with the chosen gradient estimator towards
      the encoder output.
    indices: [...] int32 (grouped: [..., G]; residual: [..., N]).
    codebook_loss: [] `mean ||sg[z_e] - z_q||^2` (grouped/residual: [G]/[N]).
    commitment_loss: [] `beta * mean ||z_e - sg[z_q]||^2` (grouped/residual:
      [G]/[N]).
    loss: [] the terms that train parameters: codebook + commitment for a
      learnt codebook, commitment only for an EMA codebook (an EMAState).
    counts: [K] code usage of this batch, the global batch with `axis_name`
      (grouped/residual: [G, K]/[N, K]).
  """
  quantized: jax.Array
  indices: jax.Array
  codebook_loss: jax.Array
  commitment_loss: jax.Array
  loss: jax.Array
  counts: jax.Array


def quantize(z_e: jax.Array, codebook: jax.Array | EMAState,
             beta: float = 0.25, *, gradient: str = "straight_through",
             cosine: bool = False, axis_name: str | None = None,
             search: Callable[[jax.Array, jax.Array], jax.Array] | None = None
             ) -> QuantizeOutput:
  """Nearest-code quantisation with both loss terms, in one call.

  Everything is computed in float32 whatever the dtype of `z_e` (distances,
  losses, the quantized output and the counts).

  Args:
    z_e: [..., D] encoder outputs.
    codebook: [K, D] learnt codes, or an EMAState (an EMA codebook: then
      `loss` is the commitment term only, the codebook moving by
      `ema_codebook(...).update`).
    beta: commitment cost, >= 0.
    gradient: "straight_through" (van den Oord et al. 2017) or "rotation"
      (`rotation_trick`, Fifty et al. 2024).
    cosine: look up on the unit sphere (ViT-VQGAN): `z_e` and the codes are
      l2-normalised first; `quantized` is then the normalised code and both
      losses are measured between normalised vectors.
    axis_name: if given, `counts` cover the global batch (`psum`). The losses
      are means over this device's batch (average them, or the gradients,
      over devices as the trainer does).
    search: the nearest-code search, `[..., D], [K, D] -> [...]` int32;
      `nearest_code` by default (a backend may pass its own formulation of
      the same function, e.g. `vqjax.xla_cpu.nearest_code`).

  Returns:
    QuantizeOutput(quantized [..., D], indices [...] int32, codebook_loss,
    commitment_loss, loss, counts [K]).

  Raises:
    ValueError: at trace time, for a codebook that is not [K, D] with D =
      `z_e.shape[-1]`, a negative `beta` or an unknown `gradient`.

  References:
    van den Oord et al. 2017, arXiv:1711.00937, eq. (3);
    Fifty et al. 2024, arXiv:2410.06424; Yu et al. 2022, arXiv:2110.04627.
  """
  fn = "quantize"
  ema = isinstance(codebook, EMAState)
  table = codes_of(codebook)
  C.check_vectors(fn, "z_e", z_e)
  C.check_codebook(fn, table, z_e, z_name="z_e")
  C.check_range(fn, "beta", beta, low=0.0)
  C.check_gradient(fn, gradient)
  C.check_axis_name(fn, axis_name)
  z = jnp.asarray(z_e, jnp.float32)
  table = jnp.asarray(table, jnp.float32)
  if cosine:
    z, table = l2_normalize(z), l2_normalize(table)
  indices = (search or nearest_code)(z, table)
  z_q = lookup(indices, table)
  cb_loss = codebook_loss(z, z_q).astype(jnp.float32)
  cm_loss = commitment_loss(z, z_q, beta).astype(jnp.float32)
  return QuantizeOutput(
      quantized=estimator(gradient)(z, z_q),
      indices=indices,
      codebook_loss=cb_loss,
      commitment_loss=cm_loss,
      loss=cm_loss if ema else cb_loss + cm_loss,
      counts=code_counts(indices, table.shape[0], axis_name=axis_name))
