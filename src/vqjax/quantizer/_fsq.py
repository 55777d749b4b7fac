"""Finite scalar quantisation (FSQ): bounded rounding, no codebook, no loss.

Each of the d channels is squashed into a bounded interval and rounded to
one of `levels[i]` values, so the implicit codebook is the grid of
`prod(levels)` points; indices number the grid points in mixed radix.
Recommended levels (Mentzer et al., table 1): [8, 6, 5] ~ 2^8,
[8, 5, 5, 5] ~ 2^10, [7, 5, 5, 5, 5] ~ 2^12, [8, 8, 8, 6, 5] ~ 2^14.

  codes   = fsq_quantize(z, levels)           # [..., d] in [-1, 1], float32
  indices = fsq_codes_to_indices(codes, levels)   # [...] int32
  codes   = fsq_indices_to_codes(indices, levels)

References:
  Mentzer, Minnen, Agustsson, Tschannen. Finite Scalar Quantization: VQ-VAE
  Made Simple. ICLR 2024, arXiv:2309.15505 (section 3, appendix A.1).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vqjax.quantizer import _common as C


def _levels(fn: str, levels: Sequence[int]) -> np.ndarray:
  """`levels` as a static int64 vector, checked."""
  try:
    array = np.asarray(levels)
  except Exception as e:  # a traced value
    raise ValueError(f"{fn}: levels must be a static list of ints; got "
                     f"{levels!r}.") from e
  if array.ndim != 1 or array.size < 1 \
      or not np.issubdtype(array.dtype, np.number) \
      or np.any(array != np.round(array)) or np.any(array < 2):
    raise ValueError(f"{fn}: levels must be a non-empty list of ints >= 2 "
                     f"(one per channel); got {levels!r}.")
  array = array.astype(np.int64)
  if np.prod(array.astype(np.float64)) > np.iinfo(np.int32).max:
    raise ValueError(f"{fn}: prod(levels) = {int(np.prod(array))} codes do "
                     "not fit int32 indices.")
  return array


def _check_eps(fn: str, eps: float, levels: np.ndarray) -> float:
  number = C.concrete_float(eps)
  if number is None:
    raise ValueError(f"{fn}: eps must be a Python number; got {eps!r}.")
  # (L - 1)(1 + eps)/2 - offset must round to at most L // 2 - offset'.
  limit = 1.0 / (float(levels.max()) - 1.0)
  C.check_range(fn, "eps", number, low=0.0, high=limit, high_open=True)
  return number


def _check_z(fn: str, z, levels: np.ndarray, name: str = "z") -> None:
  C.check_vectors(fn, name, z)
  if jnp.shape(z)[-1] != levels.size:
    raise ValueError(f"{fn}: {name} must be [..., d] with d = len(levels) = "
                     f"{levels.size}; got shape {jnp.shape(z)}.")


def fsq_codebook_size(levels: Sequence[int]) -> int:
  """Number of FSQ codes, `prod(levels)`."""
  return int(np.prod(_levels("fsq_codebook_size", levels)))


def fsq_bound(z: jax.Array, levels: Sequence[int],
              eps: float = 1e-3) -> jax.Array:
  """The bounding function before rounding: [..., d] -> [..., d] float32.

  Per channel with L levels:

    half_l = (L - 1) (1 + eps) / 2
    offset = 0.5 if L is even else 0
    shift  = atanh(offset / half_l)
    bound  = tanh(z + shift) half_l - offset

  so `round(bound)` takes exactly the L integer values -(L // 2), ...,
  (L - 1) // 2 (for even L the grid is shifted by a half: [8] gives -4..3)
  and `bound(0) = 0` (up to float32 rounding). The constants are computed in float64 and applied in
  float32. `eps` keeps the extremes reachable; it must lie in
  [0, 1/(max(levels) - 1)) so that rounding never leaves the grid.

  This is the form of lucidrains/vector-quantize-pytorch; the paper's
  appendix A.1 writes `(1 - eps)` and `tan` for `atanh`, which differ by
  O(eps) and O(shift^3) and give the same grid.

  Args:
    z: [..., d] encoder outputs, any float dtype.
    levels: d ints >= 2.
    eps: see above.

  References:
    Mentzer et al. 2023, arXiv:2309.15505, section 3 (f(z) = floor(L/2)
    tanh(z)) and appendix A.1 (the half-offset for even L).
  """
  fn = "fsq_bound"
  levels = _levels(fn, levels)
  _check_z(fn, z, levels)
  eps = _check_eps(fn, eps, levels)
  lv = levels.astype(np.float64)
  half_l = (lv - 1.0) * (1.0 + eps) / 2.0
  offset = np.where(levels % 2 == 0, 0.5, 0.0)
  shift = np.arctanh(offset / half_l)
  z = jnp.asarray(z, jnp.float32)
  return (jnp.tanh(z + shift.astype(np.float32)) * half_l.astype(np.float32)
          - offset.astype(np.float32))


def fsq_quantize(z: jax.Array, levels: Sequence[int],
                 eps: float = 1e-3) -> jax.Array:
  """FSQ codes: bound, round (straight-through), normalise to [-1, 1].

  `round(fsq_bound(z)) / (L // 2)` per channel; the forward value is exactly
  that grid point, the gradient that of `fsq_bound(z) / (L // 2)` (rounding
  is passed straight through). For odd L the codes are k/(L//2), k =
  -(L//2)..(L//2), covering [-1, 1]; for even L they run from -1 to
  1 - 1/(L//2).

  Args:
    z: [..., d] any float dtype.
    levels: d ints >= 2.
    eps: see `fsq_bound`.

  Returns:
    [..., d] float32 codes.

  References:
    Mentzer et al. 2023, arXiv:2309.15505, appendix A.1 (`quantize`).
  """
  bounded = fsq_bound(z, levels, eps)
  half_width = (_levels("fsq_quantize", levels) // 2).astype(np.float32)
  sg = lax.stop_gradient
  rounded = sg(jnp.round(bounded)) + (bounded - sg(bounded))
  return rounded / half_width


def fsq_codes_to_indices(codes: jax.Array,
                         levels: Sequence[int]) -> jax.Array:
  """Grid point -> index: [..., d] codes in [-1, 1] -> [...] int32.

  Channel i's digit is `round(code_i (L_i // 2) + L_i // 2)`, clipped to
  [0, L_i - 1] (so any input gives an index in range); the index is
  `sum_i digit_i basis_i` with `basis = cumprod([1] + levels[:-1])`.

  References:
    Mentzer et al. 2023, arXiv:2309.15505, appendix A.1 (`codes_to_indexes`).
  """
  fn = "fsq_codes_to_indices"
  levels = _levels(fn, levels)
  _check_z(fn, codes, levels, "codes")
  half_width = (levels // 2).astype(np.float32)
  basis = np.concatenate([[1], np.cumprod(levels[:-1])]).astype(np.int32)
  codes = lax.stop_gradient(jnp.asarray(codes, jnp.float32))
  digits = jnp.round(codes * half_width + half_width)
  digits = jnp.clip(jnp.nan_to_num(digits), 0, levels - 1).astype(jnp.int32)
  return jnp.sum(digits * basis, axis=-1, dtype=jnp.int32)


def fsq_indices_to_codes(indices: jax.Array,
                         levels: Sequence[int]) -> jax.Array:
  """Index -> grid point: [...] int -> [..., d] float32 codes.

  The inverse of `fsq_codes_to_indices` on 0..prod(levels)-1; other indices
  are taken modulo prod(levels).

  References:
    Mentzer et al. 2023, arXiv:2309.15505, appendix A.1 (`indexes_to_codes`).
  """
  fn = "fsq_indices_to_codes"
  levels = _levels(fn, levels)
  C.check_integer(fn, "indices", indices)
  basis = np.concatenate([[1], np.cumprod(levels[:-1])]).astype(np.int32)
  half_width = (levels // 2).astype(np.float32)
  indices = jnp.asarray(indices).astype(jnp.int32)[..., None]
  digits = jnp.mod(jnp.floor_divide(indices, basis), levels.astype(np.int32))
  return (digits.astype(jnp.float32) - half_width) / half_width


def fsq_codebook(levels: Sequence[int]) -> jax.Array:
  """The implicit codebook: [prod(levels), d] float32, row k = code of index k."""
  size = fsq_codebook_size(levels)
  return fsq_indices_to_codes(jnp.arange(size, dtype=jnp.int32), levels)
