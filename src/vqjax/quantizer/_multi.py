"""Residual VQ (N quantizers on successive residuals) and grouped VQ (the
vector split into G parts with their own codebooks).

References:
  Zeghidour, Luebs, Omran, Skoglund, Tagliasacchi. SoundStream: An End-to-End
  Neural Audio Codec. IEEE/ACM TASLP 2021, arXiv:2107.03312 (section 3.3,
  algorithm 1: residual VQ; quantizer dropout).
  Baevski, Zhou, Mohamed, Auli. wav2vec 2.0. NeurIPS 2020, arXiv:2006.11477
  (G codebooks for G parts of the vector, concatenated).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from vqjax.quantizer import _common as C
from vqjax.quantizer._vq import (EMAState, QuantizeOutput, code_counts,
                                 codebook_loss, commitment_loss, codes_of,
                                 estimator, l2_normalize, lookup,
                                 nearest_code)


def _check_stack(fn: str, codebooks, what: str) -> None:
  shape = jnp.shape(codebooks)
  C.check_floating(fn, "codebooks", codebooks)
  if len(shape) != 3 or shape[0] < 1 or shape[1] < 1:
    raise ValueError(f"{fn}: codebooks must be {what}; got shape {shape}.")


@C.keyed
class ResidualQuantizeOutput(NamedTuple):
  """What `residual_quantize` returns: QuantizeOutput's six fields, per depth
  where they are per quantizer, then what EMA updates need. All float32.

  Attributes:
    quantized: [..., D] the sum of the active depths' codes, with the chosen
      gradient estimator towards `z`.
    indices: [..., N] int32, -1 at dropped depths.
    codebook_loss: [N] `mean ||sg[r_n] - q_n||^2` (0 at dropped depths).
    commitment_loss: [N] `beta * mean ||r_n - sg[q_n]||^2` (0 when dropped).
    loss: [] the sum over depths of the terms that train parameters
      (codebook + commitment; commitment only for stacked EMAStates).
    counts: [N, K] code usage per depth (global batch with `axis_name`).
    residuals: [N, ..., D] `r_n`, the (stop-gradient) input of depth n, for
      `jax.vmap(ema.update)` over depths.
    active: [N] bool, the depths used (False: dropped by quantizer dropout).
  """
  quantized: jax.Array
  indices: jax.Array
  codebook_loss: jax.Array
  commitment_loss: jax.Array
  loss: jax.Array
  counts: jax.Array
  residuals: jax.Array
  active: jax.Array


def residual_quantize(z: jax.Array, codebooks: jax.Array | EMAState,
                      beta: float = 0.25, *,
                      num_active: int | jax.Array | None = None,
                      dropout_key: jax.Array | None = None,
                      gradient: str = "straight_through",
                      axis_name: str | None = None,
                      search: Callable[[jax.Array, jax.Array], jax.Array]
                      | None = None) -> ResidualQuantizeOutput:
  """Residual VQ: depth n quantises what depths 0..n-1 left over.

    r_0 = z;  i_n = nearest_code(r_n, C_n);  q_n = C_n[i_n];  r_{n+1} = r_n - q_n
    quantized = sum_n q_n   (forward), gradient estimator from z (backward)

  Depth n's losses are VQ-VAE's on (r_n, q_n); `r_n = z - sg[q_0 + ... +
  q_{n-1}]`, so each depth's commitment term pulls the encoder towards its
  n+1-depth reconstruction (as lucidrains' ResidualVQ). `loss` sums depths
  (SoundStream/lucidrains), so it grows with N; `grouped_quantize` averages.

  Shared codebooks: pass `jnp.broadcast_to(codebook, (N, K, D))` (the
  gradient reaching the shared `[K, D]` is then the sum over depths).

  Quantizer dropout (SoundStream section 3.3): only the first `n` depths are
  used and the others give code -1, a zero vector, zero losses and zero
  counts. `n` is `num_active` if given (e.g. a lower bitrate at inference);
  with `dropout_key` it is drawn uniformly from 1..`num_active` (default N) for
  the whole batch -- pass the same key on every device, then every device
  drops the same depths (one draw per step, as lucidrains; SoundStream draws
  per example). Without either, all N depths are used. With EMA codebooks,
  an update on a dropped depth sees no assignments (its usage decays); keep
  the old state there with `jnp.where(out.active[n], new, old)` if that is
  not wanted.

  Args:
    z: [..., D] encoder outputs, any float dtype (computed in float32).
    codebooks: [N, K, D] (one codebook per depth), or an EMAState whose
      fields are stacked over depths (`jax.vmap(ema.init)(codebooks)`):
      then `loss` is the commitment terms only and the codebooks move by
      `jax.vmap(ema.update)` on (`residuals`, `indices[..., n]`).
    beta: commitment cost, >= 0.
    num_active: number of depths to use, 1..N (an int or a traced int32).
    dropout_key: PRNG key for quantizer dropout.
    gradient: "straight_through" or "rotation" (applied to z -> sum of codes).
    axis_name: if given, `counts` cover the global batch.
    search: the nearest-code search (`nearest_code` by default), see
      `quantize`.

  Returns:
    ResidualQuantizeOutput(quantized [..., D], indices [..., N], codebook_loss
    [N], commitment_loss [N], loss [], counts [N, K], residuals [N, ..., D],
    active [N]).

  References:
    Zeghidour et al. 2021, arXiv:2107.03312, algorithm 1 and section 3.3.
  """
  fn = "residual_quantize"
  ema = isinstance(codebooks, EMAState)
  stack = codes_of(codebooks)
  C.check_vectors(fn, "z", z)
  _check_stack(fn, stack, "[N, K, D]")
  if jnp.shape(stack)[-1] != jnp.shape(z)[-1]:
    raise ValueError(f"{fn}: codebooks must be [N, K, D] with D = "
                     f"z.shape[-1] = {jnp.shape(z)[-1]}; got codebooks shape "
                     f"{jnp.shape(stack)} for z shape {jnp.shape(z)}.")
  C.check_range(fn, "beta", beta, low=0.0)
  C.check_gradient(fn, gradient)
  C.check_axis_name(fn, axis_name)
  depth, num_codes = jnp.shape(stack)[:2]
  search = search or nearest_code
  if num_active is not None:
    C.check_range(fn, "num_active", num_active, low=1, high=depth)
  z = jnp.asarray(z, jnp.float32)
  stack = jnp.asarray(stack, jnp.float32)

  if dropout_key is not None:
    high = depth if num_active is None else num_active
    num_active = jax.random.randint(dropout_key, (), 1, high + 1)
  if num_active is None:
    active = jnp.ones((depth,), bool)
  else:
    active = jnp.arange(depth) < num_active

  def one_depth(residual, xs):
    table, on = xs
    indices = search(residual, table)
    q = jnp.where(on, lookup(indices, table), 0.0)
    indices = jnp.where(on, indices, -1)
    cb = jnp.where(on, codebook_loss(residual, q), 0.0)
    cm = jnp.where(on, commitment_loss(residual, q, beta), 0.0)
    return residual - lax.stop_gradient(q), (
        indices, q, cb.astype(jnp.float32), cm.astype(jnp.float32),
        lax.stop_gradient(residual))

  _, (indices, codes, cb, cm, residuals) = lax.scan(one_depth, z,
                                                    (stack, active))
  counts = jax.vmap(lambda i: code_counts(i, num_codes,
                                          axis_name=axis_name))(indices)
  return ResidualQuantizeOutput(
      quantized=estimator(gradient)(z, jnp.sum(codes, axis=0)),
      indices=jnp.moveaxis(indices, 0, -1),
      codebook_loss=cb, commitment_loss=cm,
      loss=jnp.sum(cm) if ema else jnp.sum(cb + cm),
      counts=counts, residuals=residuals, active=active)


def residual_lookup(indices: jax.Array, codebooks: jax.Array) -> jax.Array:
  """Residual codes -> vector: `indices [..., N]`, `codebooks [N, K, D]` ->
  [..., D] float32, the sum of the depths' codes (index -1: a dropped depth,
  contributes nothing)."""
  fn = "residual_lookup"
  stack = codes_of(codebooks)
  _check_stack(fn, stack, "[N, K, D]")
  C.check_integer(fn, "indices", indices)
  if jnp.shape(indices)[-1:] != jnp.shape(stack)[:1]:
    raise ValueError(f"{fn}: indices must be [..., N] with N = "
                     f"codebooks.shape[0] = {jnp.shape(stack)[0]}; got "
                     f"shape {jnp.shape(indices)}.")
  stack = jnp.asarray(stack, jnp.float32)
  indices = jnp.moveaxis(jnp.asarray(indices), -1, 0)
  codes = jax.vmap(lambda i, t: jnp.where((i >= 0)[..., None],
                                          lookup(jnp.maximum(i, 0), t), 0.0)
                   )(indices, stack)
  return jnp.sum(codes, axis=0)


def grouped_quantize(z: jax.Array, codebooks: jax.Array | EMAState,
                     beta: float = 0.25, *, gradient: str = "straight_through",
                     cosine: bool = False, axis_name: str | None = None,
                     search: Callable[[jax.Array, jax.Array], jax.Array]
                     | None = None) -> QuantizeOutput:
  """Grouped (multi-head / product) VQ: G codebooks for G slices of z.

  `z [..., D]` is split into G contiguous parts of D/G channels; part g is
  quantised with `codebooks[g]`, and the codes are concatenated back. The
  output is a QuantizeOutput with per-group losses; `loss` is their mean
  over groups (codebook + commitment, or commitment only for stacked
  EMAStates), which for a learnt codebook equals plain VQ's loss on the
  concatenated vector, so it does not grow with G.

  Args:
    z: [..., D] encoder outputs, any float dtype (computed in float32).
    codebooks: [G, K, D/G], or an EMAState stacked over groups (update with
      `jax.vmap(ema.update)` on the groups `z.reshape(..., G, D/G)` and
      `indices[..., g]`).
    beta: commitment cost, >= 0.
    gradient: "straight_through" or "rotation" (per group).
    cosine: l2-normalise each part and its codebook (ViT-VQGAN per group).
    axis_name: if given, `counts` cover the global batch.
    search: the nearest-code search (`nearest_code` by default), see
      `quantize`.

  Returns:
    QuantizeOutput(quantized [..., D], indices [..., G], codebook_loss [G],
    commitment_loss [G], loss [], counts [G, K]).

  References:
    Baevski et al. 2020, arXiv:2006.11477, section 2 (G codebooks,
    concatenated); Jegou, Douze, Schmid. Product quantization for nearest
    neighbor search. IEEE TPAMI 2011.
  """
  fn = "grouped_quantize"
  ema = isinstance(codebooks, EMAState)
  stack = codes_of(codebooks)
  C.check_vectors(fn, "z", z)
  _check_stack(fn, stack, "[G, K, D/G]")
  groups, num_codes, part = jnp.shape(stack)
  dim = jnp.shape(z)[-1]
  if groups * part != dim:
    raise ValueError(f"{fn}: codebooks must be [G, K, D/G] with G * D/G = "
                     f"z.shape[-1] = {dim}; got codebooks shape "
                     f"{jnp.shape(stack)}.")
  C.check_range(fn, "beta", beta, low=0.0)
  C.check_gradient(fn, gradient)
  C.check_axis_name(fn, axis_name)
  search = search or nearest_code
  z = jnp.asarray(z, jnp.float32)
  parts = z.reshape(z.shape[:-1] + (groups, part))
  parts = jnp.moveaxis(parts, -2, 0)                      # [G, ..., D/G]
  stack = jnp.asarray(stack, jnp.float32)
  if cosine:
    parts, stack = l2_normalize(parts), l2_normalize(stack)

  def one_group(x, table):
    indices = search(x, table)
    q = lookup(indices, table)
    return (indices, estimator(gradient)(x, q),
            codebook_loss(x, q).astype(jnp.float32),
            commitment_loss(x, q, beta).astype(jnp.float32),
            code_counts(indices, num_codes, axis_name=axis_name))

  indices, quantized, cb, cm, counts = jax.vmap(one_group)(parts, stack)
  quantized = jnp.moveaxis(quantized, 0, -2).reshape(z.shape)
  return QuantizeOutput(
      quantized=quantized, indices=jnp.moveaxis(indices, 0, -1),
      codebook_loss=cb, commitment_loss=cm,
      loss=jnp.mean(cm) if ema else jnp.mean(cb + cm), counts=counts)


def grouped_lookup(indices: jax.Array, codebooks: jax.Array) -> jax.Array:
  """Grouped codes -> vector: `indices [..., G]`, `codebooks [G, K, D/G]` ->
  [..., D] float32, the concatenated codes."""
  fn = "grouped_lookup"
  stack = codes_of(codebooks)
  _check_stack(fn, stack, "[G, K, D/G]")
  C.check_integer(fn, "indices", indices)
  if jnp.shape(indices)[-1:] != jnp.shape(stack)[:1]:
    raise ValueError(f"{fn}: indices must be [..., G] with G = "
                     f"codebooks.shape[0] = {jnp.shape(stack)[0]}; got "
                     f"shape {jnp.shape(indices)}.")
  stack = jnp.asarray(stack, jnp.float32)
  codes = jax.vmap(lookup, in_axes=(-1, 0), out_axes=-2)(
      jnp.asarray(indices), stack)                          # [..., G, D/G]
  return codes.reshape(codes.shape[:-2] + (-1,))
