"""Winograd (Toom-Cook) convolution F(4x4, r x r), for fast XLA:CPU training.

A stride-1 convolution with an `r x r` kernel, computed on 4x4 output tiles
(Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"):

  Y_tile = A^T [ (G g G^T) (.) (B^T d_tile B) ] A        per channel pair,

where `d_tile` is the `n x n` input tile (`n = 4 + r - 1`) and `(.)` is an
elementwise product that, summed over input channels, becomes `n^2`
independent `[tiles, C_in] @ [C_in, C_out]` matmuls. For 3x3 kernels on the
VQ-VAE's 7x7 maps (computed as 2x2 tiles of 4x4, the last row and column
cropped) that is 4 * 36 = 144 multiply-adds per channel pair and image
instead of 49 * 9 = 441: 3.1x fewer.

The transforms are linear maps with small constant matrices. They are written
as sums of slices (which XLA fuses into one elementwise loop), each with an
explicit transpose as its VJP: differentiating the slices directly makes XLA
pad every slice back to full size before summing, which is slow. The
backward pass is in the Winograd domain too: transposed transforms around the
two transposed matmuls.

Results equal the direct convolution up to float32 rounding: the transforms
multiply by at most 8 (F(4x4, 3x3) uses interpolation points 0, +-1, +-2),
giving relative errors around 1e-5 of the output's scale
(`tests/test_winograd.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Matrix = tuple[tuple[float, ...], ...]

TILE = 4  # output tile size m of F(m x m, r x r)
# Finite interpolation points of F(4, r), r = 1..3 (the last point is infinity).
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0)


@functools.lru_cache(maxsize=None)
def matrices(m: int, r: int) -> tuple[Matrix, Matrix, Matrix]:
  """`(B^T [n, n], G [n, r], A^T [m, n])` of F(m, r), `n = m + r - 1`.

  Toom-Cook with points `_POINTS[:n - 1]` and infinity. The correlation
  `y_i = sum_k g_k d_{i+k}` is the transpose of the polynomial product
  `s = g * h` (deg h = m - 1): with `E_p` evaluating a polynomial of p
  coefficients at the points and `C` interpolating `s` from its values,
  `y = E_m^T [(E_r g) (.) (C^T d)]`. The Lagrange denominators are folded
  into `G`, so row j of `B^T = C^T` holds the coefficients of
  `prod_{l != j} (x - a_l)` (and of `prod_l (x - a_l)` for infinity).
  """
  n = m + r - 1
  if n - 1 > len(_POINTS):
    raise ValueError(f"F({m}, {r}) needs {n - 1} points; only "
                     f"{len(_POINTS)} are defined")
  points = _POINTS[:n - 1]
  b_t = np.zeros((n, n))
  g = np.zeros((n, r))
  a_t = np.zeros((m, n))
  for j, a in enumerate(points):
    others = [p for p in points if p != a]
    b_t[j, :n - 1] = np.polynomial.polynomial.polyfromroots(others)
    g[j] = [a**k / np.prod([a - p for p in others]) for k in range(r)]
    a_t[:, j] = [a**i for i in range(m)]
  b_t[n - 1] = np.polynomial.polynomial.polyfromroots(points)
  g[n - 1, r - 1] = 1.0
  a_t[m - 1, n - 1] = 1.0
  as_tuple = lambda x: tuple(tuple(float(v) for v in row) for row in x)
  return as_tuple(b_t), as_tuple(g), as_tuple(a_t)


def _transpose(matrix: Matrix) -> Matrix:
  return tuple(zip(*matrix))


def _combine(row: Sequence[float], parts: Sequence[Array]) -> Array:
  """`sum_j row[j] * parts[j]`, skipping zeros and multiplications by +-1."""
  terms = [p if c == 1 else -p if c == -1 else c * p
           for c, p in zip(row, parts) if c != 0]
  return functools.reduce(lambda a, b: a + b, terms)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _mix(x: Array, matrix: Matrix, axis: int) -> Array:
  """`matrix @ x` along `axis`: `[.., n_in, ..] -> [.., n_out, ..]`."""
  parts = [lax.index_in_dim(x, j, axis, keepdims=False)
           for j in range(x.shape[axis])]
  return jnp.stack([_combine(row, parts) for row in matrix], axis)


def _mix_fwd(x, matrix, axis):
  return _mix(x, matrix, axis), None


def _mix_bwd(matrix, axis, _, dy):
  return (_mix(dy, _transpose(matrix), axis),)


_mix.defvjp(_mix_fwd, _mix_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _tiles(x: Array, n: int, axis: int, out_axis: int) -> Array:
  """Overlapping tiles of length `n` and stride `TILE` along `axis`.

  `x` has `TILE * (t + 1)` entries along `axis` (t tiles; the entries after
  `TILE * t + n - TILE` are never read). Entry j of tile i, `x[TILE i + j]`,
  is entry `j mod TILE` of block `i + j // TILE`: so the tiles are slices of
  `x` reshaped into blocks, stacked along a new axis `out_axis` (length n) of
  the result, which has t entries along `axis`.
  """
  t = x.shape[axis] // TILE - 1
  blocks = x.reshape(*x.shape[:axis], t + 1, TILE, *x.shape[axis + 1:])
  parts = [lax.index_in_dim(
      lax.slice_in_dim(blocks, j // TILE, j // TILE + t, axis=axis),
      j % TILE, axis + 1, keepdims=False) for j in range(n)]
  return jnp.stack(parts, out_axis)


def _tiles_fwd(x, n, axis, out_axis):
  return _tiles(x, n, axis, out_axis), None


def _tiles_bwd(n, axis, out_axis, _, dy):
  """Overlap-add: `[.., n (out_axis), .., t (axis), ..]` ->
  `[.., TILE (t + 1), ..]`."""
  def shift(part, lo, hi):  # pad the tile axis by lo blocks before, hi after
    config = [(0, 0, 0)] * part.ndim
    config[axis] = (lo, hi, 0)
    return lax.pad(part, jnp.zeros((), part.dtype), config)

  parts = [lax.index_in_dim(dy, j, out_axis, keepdims=False) for j in range(n)]
  offsets = [sum(shift(parts[j], j // TILE, 1 - j // TILE)
                 for j in range(offset, n, TILE)) for offset in range(TILE)]
  blocks = jnp.stack(offsets, axis + 1)  # [.., t + 1, TILE, ..]
  return (blocks.reshape(*blocks.shape[:axis], -1, *blocks.shape[axis + 2:]),)


_tiles.defvjp(_tiles_fwd, _tiles_bwd)


def materialized_transpose(x: Array) -> Array:
  """`x` with its last two axes swapped (`x.T` for `[N, M]`), materialised.

  XLA:CPU runs a dot that contracts the leading non-batch axis of an operand
  (`a.T @ b`, as in every weight gradient) in a slow generic kernel; the
  barrier stops XLA from folding the transpose back into the dot, so the dot
  is a plain `[M, N] @ [N, K]` that its fast (YNNPACK) kernel takes. Copying
  the smaller operand costs less than the slower kernel.
  """
  return lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


_BATCH_MATMUL = (((2,), (1,)), ((0,), (0,)))


@jax.custom_vjp
def _batched_matmul(v: Array, u: Array) -> Array:
  """`[N, T, C] @ [N, C, O] -> [N, T, O]`."""
  return lax.dot_general(v, u, _BATCH_MATMUL)


def _batched_matmul_fwd(v, u):
  return _batched_matmul(v, u), (v, u)


def _batched_matmul_bwd(residuals, dm):
  v, u = residuals
  dv = lax.dot_general(dm, u, (((2,), (2,)), ((0,), (0,))))
  if u.shape[2] <= u.shape[1]:  # Transpose (copy) the smaller operand.
    # (The barrier keeps XLA from folding the outer transpose into the dot.)
    du = jnp.swapaxes(lax.optimization_barrier(
        lax.dot_general(materialized_transpose(dm), v, _BATCH_MATMUL)), 1, 2)
  else:
    du = lax.dot_general(materialized_transpose(v), dm, _BATCH_MATMUL)
  return dv, du


_batched_matmul.defvjp(_batched_matmul_fwd, _batched_matmul_bwd)


def supports(kernel_shape: Sequence[int],
             padding: Sequence[tuple[int, int]]) -> bool:
  """Whether `conv` takes a `[kh, kw, C, O]` kernel with this padding."""
  kh, kw = kernel_shape[:2]
  return (kh == kw and 2 <= kh <= len(_POINTS) + 2 - TILE and
          all(p >= 0 for pair in padding for p in pair))


def conv(x: Array, kernel: Array,
         padding: Sequence[tuple[int, int]]) -> Array:
  """`lax.conv_general_dilated(x, kernel, (1, 1), padding)` by Winograd.

  Args:
    x: [B, H, W, C].
    kernel: [r, r, C, O], r = 2 or 3.
    padding: ((top, bottom), (left, right)), non-negative.

  Returns:
    [B, H + top + bottom - r + 1, W + left + right - r + 1, O].
  """
  r = kernel.shape[0]
  if not supports(kernel.shape, padding):
    raise ValueError(f"Winograd conv takes square 2x2 or 3x3 kernels and "
                     f"non-negative padding, got {kernel.shape} {padding}")
  b_t, g, a_t = matrices(TILE, r)
  n = TILE + r - 1
  b, h, w, c = x.shape
  o = kernel.shape[-1]
  out = [size + lo + hi - r + 1 for size, (lo, hi) in zip((h, w), padding)]
  tiles = [-(-size // TILE) for size in out]
  # Pad to TILE * (tiles + 1): what `_tiles` reads, and whole blocks.
  x = jnp.pad(x, ((0, 0),
                  *((lo, TILE * (t + 1) - size - lo)
                    for size, (lo, _), t in zip((h, w), padding, tiles)),
                  (0, 0)))
  v = _mix(_tiles(x, n, 1, 0), b_t, 0)  # [n, B, th, W', C]
  v = _mix(_tiles(v, n, 3, 1), b_t, 1)  # [n, n, B, th, tw, C]
  u = _mix(_mix(kernel, g, 0), g, 1)  # [n, n, C, O]
  m = _batched_matmul(v.reshape(n * n, -1, c),
                      u.reshape(n * n, c, o))  # [n^2, B th tw, O]
  m = m.reshape(n, n, b, *tiles, o)
  y = _mix(_mix(m, a_t, 0), a_t, 1)  # [4, 4, B, th, tw, O]
  y = y.transpose(2, 3, 0, 4, 1, 5).reshape(b, TILE * tiles[0],
                                            TILE * tiles[1], o)
  return y[:, :out[0], :out[1]]
