"""Winograd (Toom-Cook) convolution F(m_h x m_w, r_h x r_w), for fast XLA:CPU
training.

A stride-1 convolution with an `r_h x r_w` kernel, computed on `m_h x m_w`
output tiles (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
Networks"):

  Y_tile = A_h^T [(G_h g G_w^T) (.) (B_h^T d_tile B_w)] A_w   per channel pair,

where `d_tile` is the `n_h x n_w` input tile (`n = m + r - 1`) and `(.)` is an
elementwise product that, summed over input channels, becomes `n_h n_w`
independent `[tiles, C_in] @ [C_in, C_out]` matmuls. For 3x3 kernels on the
VQ-VAE's 7x7 maps (computed as 2x2 tiles of 4x4, the last row and column
cropped) that is 4 * 36 = 144 multiply-adds per channel pair and image
instead of 49 * 9 = 441: 3.1x fewer. The Gated PixelCNN's 3x5 vertical
kernels use F(4x4, 3x5) (4 * 48 = 192 instead of 49 * 15 = 735 on a 7x7
map: 3.8x fewer) and its 1x3 horizontal ones F(1x4, 1x3).

The transforms are linear maps with small constant matrices. They are written
as sums of slices (which XLA fuses into one elementwise loop), each with an
explicit transpose as its VJP: differentiating the slices directly makes XLA
pad every slice back to full size before summing, which is slow. The
backward pass is in the Winograd domain too: transposed transforms around the
two transposed matmuls.

Results equal the direct convolution up to float32 rounding: the transforms
multiply by at most 8 (the interpolation points are 0, +-1, +-2 and, for
5-tap kernels, +-1/2), giving relative errors around 1e-5 of the output's scale
(`tests/test_winograd.py`). Being a rounding-level equality, an output's
coefficient of an input outside its window is ~1e-7 rather than exactly 0:
masked (causal) models use it for training steps only.
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

TILE = 4  # output tile m of F(m, r) along every axis with r > 1
# Finite interpolation points of F(m, r), the first m + r - 2 of them (the
# last point is infinity).
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)
MAX_TAPS = len(_POINTS) + 2 - TILE  # longest kernel axis F(TILE, r) takes: 5


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _tiles(x: Array, n: int, tile: int, axis: int, out_axis: int) -> Array:
  """Overlapping tiles of length `n` and stride `tile` along `axis`.

  `x` has `tile * (t + _blocks_after(n, tile))` entries along `axis` (t
  tiles; the entries after `tile * (t - 1) + n` are never read). Entry j of
  tile i, `x[tile i + j]`, is entry `j mod tile` of block `i + j // tile`:
  so the tiles are slices of `x` reshaped into blocks, stacked along a new
  axis `out_axis` (length n) of the result, which has t entries along `axis`.
  """
  extra = _blocks_after(n, tile)
  t = x.shape[axis] // tile - extra
  blocks = x.reshape(*x.shape[:axis], t + extra, tile, *x.shape[axis + 1:])
  parts = [lax.index_in_dim(
      lax.slice_in_dim(blocks, j // tile, j // tile + t, axis=axis),
      j % tile, axis + 1, keepdims=False) for j in range(n)]
  return jnp.stack(parts, out_axis)


def _blocks_after(n: int, tile: int) -> int:
  """Whole blocks of `tile` entries that a tile of length `n` reaches into
  past its own."""
  return -(-n // tile) - 1


def _tiles_fwd(x, n, tile, axis, out_axis):
  return _tiles(x, n, tile, axis, out_axis), None


def _tiles_bwd(n, tile, axis, out_axis, _, dy):
  """Overlap-add: `[.., n (out_axis), .., t (axis), ..]` ->
  `[.., tile (t + _blocks_after), ..]`."""
  extra = _blocks_after(n, tile)

  def shift(part, lo, hi):  # pad the tile axis by lo blocks before, hi after
    config = [(0, 0, 0)] * part.ndim
    config[axis] = (lo, hi, 0)
    return lax.pad(part, jnp.zeros((), part.dtype), config)

  parts = [lax.index_in_dim(dy, j, out_axis, keepdims=False) for j in range(n)]
  offsets = [sum(shift(parts[j], j // tile, extra - j // tile)
                 for j in range(offset, n, tile)) for offset in range(tile)]
  blocks = jnp.stack(offsets, axis + 1)  # [.., t + extra, tile, ..]
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


def tile_size(r: int) -> int:
  """Output tile m of F(m, r) along an axis with r kernel taps: `TILE`, or 1
  for r = 1 (no transform along that axis)."""
  return 1 if r == 1 else TILE


def supports(kernel_shape: Sequence[int],
             padding: Sequence[tuple[int, int]]) -> bool:
  """Whether `conv` takes a `[kh, kw, C, O]` kernel with this padding."""
  return (all(1 <= r <= MAX_TAPS for r in kernel_shape[:2]) and
          max(kernel_shape[:2]) >= 2 and
          all(p >= 0 for pair in padding for p in pair))


def conv(x: Array, kernel: Array,
         padding: Sequence[tuple[int, int]]) -> Array:
  """`lax.conv_general_dilated(x, kernel, (1, 1), padding)` by Winograd.

  F(m_h x m_w, r_h x r_w) with `m = tile_size(r)` per axis: F(4x4, 3x3) for
  the VQ-VAE's 3x3 kernels, F(4x4, 3x5) for the Gated PixelCNN's 3x5
  vertical ones.

  Args:
    x: [B, H, W, C].
    kernel: [r_h, r_w, C, O], each r in 1..MAX_TAPS, not both 1.
    padding: ((top, bottom), (left, right)), non-negative.

  Returns:
    [B, H + top + bottom - r_h + 1, W + left + right - r_w + 1, O].
  """
  if not supports(kernel.shape, padding):
    raise ValueError(f"Winograd conv takes kernels of 1 to {MAX_TAPS} taps per "
                     f"axis (not 1x1) and non-negative padding, got "
                     f"{kernel.shape} {padding}")
  rs = kernel.shape[:2]
  ms = [tile_size(r) for r in rs]
  ns = [m + r - 1 for m, r in zip(ms, rs)]
  (bt_h, g_h, at_h), (bt_w, g_w, at_w) = (matrices(m, r)
                                          for m, r in zip(ms, rs))
  b, h, w, c = x.shape
  o = kernel.shape[-1]
  out = [size + lo + hi - r + 1
         for size, (lo, hi), r in zip((h, w), padding, rs)]
  tiles = [-(-size // m) for size, m in zip(out, ms)]
  # Pad to whole blocks, as many as `_tiles` reads.
  x = jnp.pad(x, ((0, 0),
                  *((lo, m * (t + _blocks_after(n, m)) - size - lo)
                    for size, (lo, _), t, m, n in
                    zip((h, w), padding, tiles, ms, ns)),
                  (0, 0)))
  v = _mix(_tiles(x, ns[0], ms[0], 1, 0), bt_h, 0)  # [n_h, B, th, W', C]
  v = _mix(_tiles(v, ns[1], ms[1], 3, 1), bt_w, 1)  # [n_h, n_w, B, th, tw, C]
  u = _mix(_mix(kernel, g_h, 0), g_w, 1)  # [n_h, n_w, C, O]
  m = _batched_matmul(v.reshape(ns[0] * ns[1], -1, c),
                      u.reshape(ns[0] * ns[1], c, o))  # [n_h n_w, B th tw, O]
  m = m.reshape(*ns, b, *tiles, o)
  y = _mix(_mix(m, at_h, 0), at_w, 1)  # [m_h, m_w, B, th, tw, O]
  y = y.transpose(2, 3, 0, 4, 1, 5).reshape(b, ms[0] * tiles[0],
                                            ms[1] * tiles[1], o)
  return y[:, :out[0], :out[1]]
