"""Convolutions written for XLA:CPU: the functions of `lax.conv_general_dilated`
and of a 4x4 stride-2 'SAME' transposed convolution, in forms XLA:CPU runs fast.

Every heavy part of their forward and backward passes is a stride-1
convolution with at most 'SAME' padding or a plain `[M, K] @ [K, N]` matmul:
the forms XLA:CPU hands to its fast (YNNPACK) kernels. What the plain
formulations hit instead, on XLA:CPU:

* the kernel gradient of a padded convolution is rewritten by XLA into a
  convolution with a reversed window, which only a generic loop takes;
* the input gradient of a strided convolution convolves an input dilated with
  zeros (`lhs_dilate`), three quarters of it multiplications by zero, in the
  same generic loop; so does `nn.ConvTranspose`'s forward pass;
* convolutions padded by more than `(k - 1) // 2` (every input gradient of a
  'VALID' or 'full' convolution) and dots that contract an operand's leading
  axis (every kernel gradient, `x.T @ dy`) go to slower Eigen kernels.

Hence: custom VJPs whose backward passes are again fast forward-style
convolutions or matmuls, with transposed operands materialised
(`materialized_transpose`), and the 4x4 stride-2 layers written as im2col /
col2im around one matmul each way. On top of that, where the channels are
deep enough, the 3x3 convolutions, the 4x4 stride-2 convolution (after
space-to-depth, a 2x2 one) and the 4x4 stride-2 transposed convolution (one
2x2 convolution over its four phases) use Winograd's minimal filtering
algorithm (`vqjax.xla_cpu.winograd`): the same function with 2-3x fewer
multiplications. `tests/test_xla_cpu.py` and `tests/test_winograd.py` check
outputs and gradients against Flax's layers; `README.md` has the timings.

Nothing here is a Flax module: `vqjax.xla_cpu.kernels` computes Flax's own
`nn.Conv` / `nn.ConvTranspose` with these functions, on their own parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from vqjax.xla_cpu import winograd as winograd_lib
from vqjax.xla_cpu.winograd import materialized_transpose

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]

_DIMS = ("NHWC", "HWIO", "NHWC")
# Below this many multiply-adds per output value (kh * kw * C_in), a
# convolution's forward pass is an explicit im2col matmul: XLA's convolution
# kernels are slow with so few input channels (the encoder's first layer).
_IM2COL_MAX_DEPTH = 64
# Fewest output channels for which a transposed convolution goes to Winograd.
_WINOGRAD_MIN_OUT_CHANNELS = 16


def _xla_conv(x: Array, kernel: Array,
              padding: Sequence[tuple[int, int]]) -> Array:
  """XLA's stride-1 convolution, NHWC/HWIO, explicit padding."""
  return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                  dimension_numbers=_DIMS)


def _pad(x: Array, padding: Sequence[tuple[int, int]]) -> Array:
  """Zero-pads (or, for negative widths, crops) H and W of `[B, H, W, C]`."""
  (top, bottom), (left, right) = padding
  return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, 0),
                                             (left, right, 0), (0, 0, 0)))


def _windows(x: Array, kh: int, kw: int) -> list[Array]:
  """The `kh * kw` shifted windows of a VALID convolution, row-major:
  `[B, H, W, C]` -> list of `[B, H - kh + 1, W - kw + 1, C]`."""
  oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  return [x[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)]


def _conv_forward(x: Array, kernel: Array,
                  padding: tuple[tuple[int, int], ...]) -> Array:
  """Stride-1 convolution by the fastest XLA:CPU formulation for its shape."""
  kh, kw, c, o = kernel.shape
  if kh == kw == 1:
    return jnp.dot(_pad(x, padding), kernel[0, 0])
  if kh * kw * c <= _IM2COL_MAX_DEPTH:
    cols = jnp.concatenate(_windows(_pad(x, padding), kh, kw), axis=-1)
    return jnp.dot(cols, kernel.reshape(kh * kw * c, o))
  if all(0 <= p <= (k - 1) // 2 for pair, k in zip(padding, (kh, kw))
         for p in pair):
    return _xla_conv(x, kernel, padding)
  # XLA:CPU's fast convolution kernel takes at most "SAME" padding; pad
  # explicitly, behind a barrier that stops XLA from folding the pad back.
  return _xla_conv(lax.optimization_barrier(_pad(x, padding)), kernel,
                   ((0, 0), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_stride1(x: Array, kernel: Array,
                  padding: tuple[tuple[int, int], ...]) -> Array:
  """`lax.conv_general_dilated(x, kernel, (1, 1), padding)`, NHWC/HWIO.

  Args:
    x: [B, H, W, C].
    kernel: [kh, kw, C, O].
    padding: ((top, bottom), (left, right)), any integers.

  Returns:
    [B, H + top + bottom - kh + 1, W + left + right - kw + 1, O].

  Backward: the input gradient is the convolution of the cotangent with the
  flipped, in/out-swapped kernel and padding `k - 1 - p` (a plain stride-1
  convolution, same kernels as the forward pass, only the real input pixels
  computed); the kernel gradient is a stride-1 convolution too, of the input
  by the cotangent, batch and feature axes swapped (or one matmul over the
  im2col columns, for few input channels).
  """
  return _conv_forward(x, kernel, padding)


def _conv_stride1_fwd(x, kernel, padding):
  return _conv_forward(x, kernel, padding), (x, kernel)


def _conv_stride1_bwd(padding, residuals, dy):
  x, kernel = residuals
  kh, kw, c, o = kernel.shape
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # [kh, kw, O, C]
  dx = _conv_forward(dy, flipped, tuple(
      (k - 1 - lo, k - 1 - hi) for (lo, hi), k in zip(padding, (kh, kw))))
  if kh == kw == 1:
    x_2d = _pad(x, padding).reshape(-1, c)
    dy_2d = dy.reshape(-1, o)
    if c <= o:  # Transpose (copy) the smaller operand.
      dkernel = jnp.dot(materialized_transpose(x_2d), dy_2d)
    else:  # (The barrier keeps XLA from folding the `.T` into the dot.)
      dkernel = lax.optimization_barrier(
          jnp.dot(materialized_transpose(dy_2d), x_2d)).T
    dkernel = dkernel[None, None]
  elif kh * kw * c <= _IM2COL_MAX_DEPTH:
    # [O, N] @ [N, kh * kw * C]: one matmul over the im2col columns.
    cols = jnp.concatenate(_windows(_pad(x, padding), kh, kw), axis=-1)
    dkernel = jnp.dot(materialized_transpose(dy.reshape(-1, o)),
                      cols.reshape(-1, kh * kw * c))
    dkernel = dkernel.reshape(o, kh, kw, c).transpose(1, 2, 3, 0)
  elif kh * kw < 9:
    # One [O, N] @ [N, C] matmul per tap (`dy.T` materialised once).
    dy_t = materialized_transpose(dy.reshape(-1, o))
    dkernel = jnp.stack([jnp.dot(dy_t, window.reshape(-1, c))
                         for window in _windows(_pad(x, padding), kh, kw)])
    dkernel = dkernel.reshape(kh, kw, o, c).transpose(0, 1, 3, 2)
  else:
    # dkernel[i, j, c, o] = sum_{b,h,w} x_pad[b, h + i, w + j, c] dy[b, h, w, o]
    # is a stride-1 convolution of x with "batch" C and "features" B, by the
    # kernel dy ([out_h, out_w, B, O]); with both operands transposed into
    # that layout (two copies, instead of kh * kw shifted windows), XLA's fast
    # convolution kernel takes it (on 7x7 inputs it beats per-tap matmuls for
    # 3x3 kernels, not for 2x2 ones).
    x_t = lax.optimization_barrier(x.transpose(3, 1, 2, 0))  # [C, H, W, B]
    dy_t = lax.optimization_barrier(dy.transpose(1, 2, 0, 3))  # [oh, ow, B, O]
    dkernel = _xla_conv(x_t, dy_t, padding)  # [C, kh, kw, O]
    dkernel = dkernel.transpose(1, 2, 0, 3)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd)


def _explicit_padding(padding: Padding, in_shape: Sequence[int],
                      kernel_shape: Sequence[int],
                      strides: Sequence[int]) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(in_shape, kernel_shape, strides, padding)
  else:
    pads = padding
  return [(int(lo), int(hi)) for lo, hi in pads]


def space_to_depth(x: Array, block: int) -> Array:
  """`[B, H, W, C]` -> `[B, H / s, W / s, s * s * C]`, channels ordered
  `(row offset, column offset, c)`; H and W must be multiples of `s`."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block,
                                               block * block * c)


def conv2d(x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
           padding: Padding = "SAME", winograd: bool = True) -> Array:
  """`lax.conv_general_dilated(x, kernel, strides, padding)` (NHWC/HWIO).

  Strided convolutions are rewritten as stride-1 ones by space-to-depth: with
  stride s, tap `t = s a + p` of output `i` reads padded input `s (i + a) + p`,
  i.e. tap `a` of a `ceil(k / s)`-tap stride-1 convolution over the blocks of s
  input pixels, whose channels hold the s offsets `p` (kernel taps beyond `k`
  are zero). So a 4x4 stride-2 convolution is a 2x2 stride-1 convolution on a
  `[B, H/2, W/2, 4C]` input, any padding. The 4x4 stride-2 'SAME' case (the
  VQ-VAE encoder's) goes to `conv_4x4_stride2_same`, im2col and matmuls,
  which beat space-to-depth there.

  Unless `winograd` is False, stride-1 3x3 and 2x2 convolutions (after
  space-to-depth: a 4x4 stride-2 one is a 2x2 one) with more than
  `_IM2COL_MAX_DEPTH` multiply-adds per output and non-negative padding go to
  `vqjax.xla_cpu.winograd.conv`: on the VQ-VAE's 7x7 maps F(4x4, 3x3) does
  3.1x fewer multiply-adds than the direct convolution and F(4x4, 2x2) 1.96x
  fewer.

  Args:
    x: [B, H, W, C].
    kernel: [kh, kw, C, O].
    strides: (sh, sw).
    padding: 'SAME', 'VALID' or [(lo, hi), (lo, hi)].
    winograd: use the Winograd algorithm where it applies (same function, up
      to float32 rounding of ~1e-5 of the output's scale).

  Returns:
    [B, out_h, out_w, O], as `lax.conv_general_dilated`.
  """
  kh, kw, c, o = kernel.shape
  pads = _explicit_padding(padding, x.shape[1:3], (kh, kw), strides)
  sh, sw = strides
  if sh != sw:
    raise NotImplementedError(f"unequal strides {strides}")
  s = sh
  out = [(n + lo + hi - k) // s + 1
         for n, (lo, hi), k in zip(x.shape[1:3], pads, (kh, kw))]
  if s == 1:
    return _stride1(x, kernel, pads, winograd)
  taps = [-(-k // s) for k in (kh, kw)]  # ceil(k / s) taps per block
  if (s == 2 and (kh, kw) == (4, 4) and
      pads == _explicit_padding("SAME", x.shape[1:3], (4, 4), (2, 2)) and
      not (winograd and _use_winograd((*taps, s * s * c), ((0, 0), (0, 0))))):
    return conv_4x4_stride2_same(x, kernel)
  # Pad (or crop) so the padded input is exactly s * (out + taps - 1) long.
  ends = [s * (n_out + t - 1) for n_out, t in zip(out, taps)]
  x = _pad(x, [(lo, end - lo - n) for (lo, _), end, n in
               zip(pads, ends, x.shape[1:3])])
  kernel = jnp.pad(kernel, ((0, s * taps[0] - kh), (0, s * taps[1] - kw),
                            (0, 0), (0, 0)))
  kernel = kernel.reshape(taps[0], s, taps[1], s, c, o)
  kernel = kernel.transpose(0, 2, 1, 3, 4, 5).reshape(taps[0], taps[1],
                                                      s * s * c, o)
  return _stride1(space_to_depth(x, s), kernel, ((0, 0), (0, 0)), winograd)


def _use_winograd(kernel_shape: Sequence[int],
                  padding: Sequence[tuple[int, int]]) -> bool:
  """Winograd for 2x2 and 3x3 kernels deep enough for the transforms to pay."""
  kh, kw, c = kernel_shape[:3]
  return (kh == kw and kh in (2, 3) and kh * kw * c > _IM2COL_MAX_DEPTH and
          winograd_lib.supports(kernel_shape, padding))


def _stride1(x: Array, kernel: Array, padding: Sequence[tuple[int, int]],
             winograd: bool) -> Array:
  if winograd and _use_winograd(kernel.shape, padding):
    return winograd_lib.conv(x, kernel, padding)
  return _conv_stride1(x, kernel, tuple(padding))


def _shift(x: Array, offsets: Sequence[int]) -> Array:
  """`out[:, a, b] = x[:, a + da, b + db]`, zero where that is outside `x`:
  `[B, H, W, ...] -> [B, H, W, ...]`."""
  config = [(0, 0, 0)] * x.ndim
  for axis, d in zip((1, 2), offsets):
    config[axis] = (-d, d, 0)
  return lax.pad(x, jnp.zeros((), x.dtype), config)


def _taps_to_image(taps: Array) -> Array:
  """col2im of a 4x4 stride-2 'SAME' transposed convolution.

  Output pixel `2 a + p` (per axis) sums tap `t = p` of input pixel `a + p - 1`
  and tap `t = p + 2` of input pixel `a + p`.

  Args:
    taps: [B, H, W, 4, 4, C], `taps[:, i, j, t_h, t_w]` = input pixel (i, j)'s
      contribution through kernel tap (t_h, t_w).

  Returns:
    [B, 2H, 2W, C].
  """
  b, h, w, _, _, c = taps.shape
  rows = []
  for p in (0, 1):
    cols = []
    for q in (0, 1):
      cols.append(sum(_shift(taps[:, :, :, p + 2 * u, q + 2 * v, :],
                             (p + u - 1, q + v - 1))
                      for u in (0, 1) for v in (0, 1)))
    rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2 (q), C]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, c)


def _image_to_taps(image: Array) -> Array:
  """The transpose of `_taps_to_image`: `[B, 2H, 2W, C] -> [B, H, W, 4, 4, C]`,
  tap (t_h, t_w) of pixel (i, j) reading the output pixel it was added to."""
  b, h2, w2, c = image.shape
  h, w = h2 // 2, w2 // 2
  phases = image.reshape(b, h, 2, w, 2, c)
  taps = [[None] * 4 for _ in range(4)]
  for p in (0, 1):
    for q in (0, 1):
      phase = phases[:, :, p, :, q, :]
      for u in (0, 1):
        for v in (0, 1):
          taps[p + 2 * u][q + 2 * v] = _shift(phase, (1 - p - u, 1 - q - v))
  return jnp.stack([jnp.stack(row, axis=3) for row in taps], axis=3)


@jax.custom_vjp
def conv_transpose_4x4_stride2(x: Array, kernel: Array) -> Array:
  """`lax.conv_transpose(x, kernel, (2, 2), "SAME")` for a 4x4 kernel.

  Each input pixel `i` adds `x[i] @ kernel[t]` to output pixel `2 i + 2 - t`
  (per axis, `t` = 0..3). So all taps come out of one matmul,
  `[B*H*W, C_in] @ [C_in, 16 C_out]`, with no multiplications by zero, followed
  by 16 shifted adds (col2im). The backward pass gathers the cotangent back
  into taps (`[B*H*W, 16 C_out]`) and does the two transposed matmuls.

  Args:
    x: [B, H, W, C_in].
    kernel: [4, 4, C_in, C_out] (the `nn.ConvTranspose` kernel).

  Returns:
    [B, 2H, 2W, C_out].
  """
  return _conv_transpose_fwd(x, kernel)[0]


def _kernel_matrix(kernel: Array) -> Array:
  """[4, 4, C_in, C_out] -> [C_in, 16 C_out], columns ordered (t_h, t_w, c)."""
  c_in = kernel.shape[2]
  return kernel.transpose(2, 0, 1, 3).reshape(c_in, -1)


def _conv_transpose_fwd(x, kernel):
  b, h, w, _ = x.shape
  c_out = kernel.shape[-1]
  taps = jnp.dot(x, _kernel_matrix(kernel)).reshape(b, h, w, 4, 4, c_out)
  return _taps_to_image(taps), (x, kernel)


def _conv_transpose_bwd(residuals, dy):
  x, kernel = residuals
  c_in, c_out = kernel.shape[2:]
  dtaps = _image_to_taps(dy).reshape(-1, 16 * c_out)
  dx = jnp.dot(dtaps, _kernel_matrix(kernel).T).reshape(x.shape)
  dmatrix = jnp.dot(materialized_transpose(x.reshape(-1, c_in)),
                    dtaps)  # [C_in, 16 C_out]
  dkernel = dmatrix.reshape(c_in, 4, 4, c_out).transpose(1, 2, 0, 3)
  return dx, dkernel


conv_transpose_4x4_stride2.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


@jax.custom_vjp
def _interleave_phases(windows: Array) -> Array:
  """`[B, H + 1, W + 1, 2, 2, C] -> [B, 2H, 2W, C]`: output pixel
  `(2a + p, 2b + q)` is `windows[:, a + p, b + q, p, q]`."""
  b, h, w = windows.shape[0], windows.shape[1] - 1, windows.shape[2] - 1
  rows = [jnp.stack([windows[:, p:p + h, q:q + w, p, q] for q in (0, 1)],
                    axis=3) for p in (0, 1)]  # [B, H, W, 2 (q), C]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, -1)


def _interleave_phases_fwd(windows):
  return _interleave_phases(windows), None


def _interleave_phases_bwd(_, dy):
  # Written out: differentiating the four slices pads each back to the whole
  # `windows` shape and sums them.
  b, h2, w2, c = dy.shape
  phases = dy.reshape(b, h2 // 2, 2, w2 // 2, 2, c)
  return (jnp.stack([jnp.stack([
      _pad(phases[:, :, p, :, q], ((p, 1 - p), (q, 1 - q)))
      for q in (0, 1)], axis=3) for p in (0, 1)], axis=3),)


_interleave_phases.defvjp(_interleave_phases_fwd, _interleave_phases_bwd)


def conv_transpose_4x4_stride2_winograd(x: Array, kernel: Array) -> Array:
  """`conv_transpose_4x4_stride2` by one Winograd F(4x4, 2x2) convolution.

  Output pixel `2 a + p` (per axis) is `x[a + p - 1] k[p] + x[a + p] k[p + 2]`:
  for both phases p a 2-tap correlation over input rows `s, s + 1` with
  `s = a + p - 1`. So one 2x2 convolution of the input padded by one on each
  side, whose `4 C_out` output channels hold the four phases' kernels
  `k[p + 2u, q + 2v]`, gives every phase at all `(H + 1) x (W + 1)` window
  positions (8x8 for a 7x7 input: whole 4x4 tiles), and phase (p, q) takes
  positions `(a + p, b + q)`. 100 multiply-adds per channel pair and input
  pixel instead of the matmul formulation's 196 (7x7 input).

  Args:
    x: [B, H, W, C_in].
    kernel: [4, 4, C_in, C_out] (the `nn.ConvTranspose` kernel).

  Returns:
    [B, 2H, 2W, C_out].
  """
  b, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  phases = kernel.reshape(2, 2, 2, 2, c_in, c_out)  # [u, p, v, q, C_in, C_out]
  phases = phases.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, c_in, 4 * c_out)
  windows = winograd_lib.conv(x, phases, ((1, 1), (1, 1)))
  return _interleave_phases(windows.reshape(b, h + 1, w + 1, 2, 2, c_out))


@jax.custom_vjp
def conv_4x4_stride2_same(x: Array, kernel: Array) -> Array:
  """`lax.conv_general_dilated(x, kernel, (2, 2), "SAME")` for a 4x4 kernel.

  The transpose of `conv_transpose_4x4_stride2`: output pixel `i` (per axis)
  is `sum_t x[2 i + t - 1] kernel[t]`, i.e. tap `t' = 3 - t` of the gather
  `_image_to_taps` (`x[2 i + 2 - t']`), so the forward pass is one gather
  (im2col) and one `[B*H/2*W/2, 16 C_in] @ [16 C_in, C_out]` matmul, and the
  backward pass two matmuls and a col2im (`_taps_to_image`). Odd sizes are
  padded by one zero row/column at the end ('SAME' pads (1, 2) there).

  Args:
    x: [B, H, W, C_in].
    kernel: [4, 4, C_in, C_out] (the `nn.Conv` kernel).

  Returns:
    [B, ceil(H / 2), ceil(W / 2), C_out].
  """
  return _conv_stride2_fwd(x, kernel)[0]


def _stride2_taps(x: Array) -> Array:
  """[B, H, W, C] -> im2col columns [B, ceil(H/2), ceil(W/2), 16 C]."""
  b, h, w, c = x.shape
  x = _pad(x, ((0, h % 2), (0, w % 2)))
  taps = _image_to_taps(x)  # [B, H', W', 4, 4, C]
  return taps.reshape(*taps.shape[:3], 16 * c)


def _conv_stride2_fwd(x, kernel):
  c_in, c_out = kernel.shape[2:]
  matrix = jnp.flip(kernel, (0, 1)).reshape(16 * c_in, c_out)
  taps = _stride2_taps(x)
  return jnp.dot(taps, matrix), (taps, kernel, x.shape)


def _conv_stride2_bwd(residuals, dy):
  taps, kernel, x_shape = residuals
  b, h, w, c_in = x_shape
  c_out = kernel.shape[-1]
  matrix = jnp.flip(kernel, (0, 1)).reshape(16 * c_in, c_out)
  dy_2d = dy.reshape(-1, c_out)
  dtaps = jnp.dot(dy_2d, matrix.T).reshape(*dy.shape[:3], 4, 4, c_in)
  dx = _taps_to_image(dtaps)[:, :h, :w, :]
  dmatrix = lax.optimization_barrier(jnp.dot(
      materialized_transpose(dy_2d),
      taps.reshape(-1, 16 * c_in)))  # [C_out, 16 C_in]
  dkernel = jnp.flip(dmatrix.T.reshape(4, 4, c_in, c_out), (0, 1))
  return dx, dkernel


conv_4x4_stride2_same.defvjp(_conv_stride2_fwd, _conv_stride2_bwd)


def conv_transpose_4x4_stride2_same(x: Array, kernel: Array,
                                   winograd: bool = True) -> Array:
  """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")`'s
  function, `lax.conv_transpose(x, kernel, (2, 2), "SAME")`.

  With `winograd` and enough channels, one Winograd convolution
  (`conv_transpose_4x4_stride2_winograd`); otherwise one matmul and shifted
  adds (`conv_transpose_4x4_stride2`).

  Args:
    x: [B, H, W, C_in].
    kernel: [4, 4, C_in, C_out].

  Returns:
    [B, 2H, 2W, C_out].
  """
  # With few output channels the transforms cost more than they save.
  if (winograd and kernel.shape[-1] >= _WINOGRAD_MIN_OUT_CHANNELS and
      _use_winograd((2, 2, x.shape[-1]), ((1, 1), (1, 1)))):
    return conv_transpose_4x4_stride2_winograd(x, kernel)
  return conv_transpose_4x4_stride2(x, kernel)


__all__: Sequence[str] = ["conv2d", "conv_4x4_stride2_same",
                          "conv_transpose_4x4_stride2",
                          "conv_transpose_4x4_stride2_same",
                          "conv_transpose_4x4_stride2_winograd",
                          "space_to_depth"]
