"""Layers shared by the vqjax models, written for fast XLA:CPU training.

`Conv` and `UpsampleConvTranspose` compute exactly what `nn.Conv` and
`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")` compute,
with the same parameters (names, shapes, initialisers), but every heavy part of
their forward and backward passes is a dense stride-1 convolution or a matmul,
which XLA:CPU hands to its fast kernels (YNNPACK / Eigen). The plain
formulations hit slow generic loops on XLA:CPU:

* the gradient of a padded convolution w.r.t. its kernel is rewritten by XLA
  into a convolution with a reversed window, which no fast kernel takes (2.3 s
  for the decoder's first upsampling, batch 128, against ~35 ms here);
* the input gradient of a strided convolution is a convolution of an input
  dilated with zeros (`lhs_dilate`), three quarters of it multiplications by
  zero, also in a generic loop;
* `nn.ConvTranspose` itself is such an input-dilated convolution.

`tests/test_layers.py` checks outputs and gradients against the Flax layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]

_DIMS = ("NHWC", "HWIO", "NHWC")
# Below this many multiply-adds per output value (kh * kw * C_in), a
# convolution's forward pass is an explicit im2col matmul: XLA's convolution
# kernels are slow with so few input channels (the encoder's first layer).
_IM2COL_MAX_DEPTH = 64


def _conv_valid(x: Array, kernel: Array) -> Array:
  """XLA's stride-1 VALID convolution: `[B, H, W, C] * [kh, kw, C, O] ->
  [B, H - kh + 1, W - kw + 1, O]`."""
  return lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                  dimension_numbers=_DIMS)


def _taps(x: Array, kh: int, kw: int) -> list[Array]:
  """The `kh * kw` shifted windows of a VALID convolution, row-major:
  `[B, H, W, C]` -> list of `[B, H - kh + 1, W - kw + 1, C]`."""
  oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  return [x[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)]


def _conv_forward(x: Array, kernel: Array) -> Array:
  """VALID stride-1 convolution by the fastest XLA:CPU formulation for its
  shape: `[B, H, W, C] * [kh, kw, C, O] -> [B, H - kh + 1, W - kw + 1, O]`."""
  kh, kw, c, o = kernel.shape
  if kh == kw == 1:
    return jnp.dot(x, kernel[0, 0])
  if kh * kw * c <= _IM2COL_MAX_DEPTH:
    cols = jnp.concatenate(_taps(x, kh, kw), axis=-1)
    return jnp.dot(cols, kernel.reshape(kh * kw * c, o))
  return _conv_valid(x, kernel)


@jax.custom_vjp
def conv2d_valid(x: Array, kernel: Array) -> Array:
  """`lax.conv_general_dilated(x, kernel, (1, 1), "VALID")` in NHWC/HWIO, with
  a backward pass made of fast XLA:CPU kernels.

  Args:
    x: [B, H, W, C] input.
    kernel: [kh, kw, C, O].

  Returns:
    [B, H - kh + 1, W - kw + 1, O].

  Backward: the input gradient is the VALID convolution of the cotangent,
  zero-padded by `k - 1`, with the flipped, in/out-swapped kernel; the kernel
  gradient is one `[C, N] @ [N, O]` matmul per tap (N = B * out_h * out_w).
  """
  return _conv_forward(x, kernel)


def _conv2d_valid_fwd(x, kernel):
  return _conv_forward(x, kernel), (x, kernel)


def _conv2d_valid_bwd(residuals, dy):
  x, kernel = residuals
  kh, kw, c, o = kernel.shape
  if kh == kw == 1:
    dx = jnp.dot(dy, kernel[0, 0].T)
  else:
    dy_padded = jnp.pad(dy, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1),
                             (0, 0)))
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # [kh, kw, O, C]
    dx = _conv_valid(dy_padded, flipped)
  dy_2d = dy.reshape(-1, o)
  dkernel = jnp.stack([
      lax.dot_general(window.reshape(-1, c), dy_2d, (((0,), (0,)), ((), ())))
      for window in _taps(x, kh, kw)
  ]).reshape(kh, kw, c, o)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


conv2d_valid.defvjp(_conv2d_valid_fwd, _conv2d_valid_bwd)


def _explicit_padding(padding: Padding, in_shape: Sequence[int],
                      kernel_shape: Sequence[int],
                      strides: Sequence[int]) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    return list(lax.padtype_to_pads(in_shape, kernel_shape, strides, padding))
  return [tuple(p) for p in padding]


def space_to_depth(x: Array, block: int) -> Array:
  """`[B, H, W, C]` -> `[B, H / s, W / s, s * s * C]`, channels ordered
  `(row offset, column offset, c)`; H and W must be multiples of `s`."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block,
                                               block * block * c)


def conv2d(x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
           padding: Padding = "SAME") -> Array:
  """`lax.conv_general_dilated(x, kernel, strides, padding)` (NHWC/HWIO).

  Strided convolutions are rewritten as stride-1 ones by space-to-depth: with
  stride s, tap `t = s a + p` of output `i` reads padded input `s (i + a) + p`,
  i.e. tap `a` of a `ceil(k / s)`-tap stride-1 convolution over the blocks of s
  input pixels, whose channels hold the s offsets `p` (kernel taps beyond `k`
  are zero). So a 4x4 stride-2 convolution is a 2x2 stride-1 convolution on a
  `[B, H/2, W/2, 4C]` input, any padding ('SAME' pads (1, 2) on odd sizes).

  Args:
    x: [B, H, W, C].
    kernel: [kh, kw, C, O].
    strides: (sh, sw).
    padding: 'SAME', 'VALID' or [(lo, hi), (lo, hi)].

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
  taps = [-(-k // s) for k in (kh, kw)]  # ceil(k / s) taps per block
  # Pad (or crop: lax.pad takes negative widths) so the padded input is
  # exactly s * (out + taps - 1) long.
  ends = [s * (n_out + t - 1) for n_out, t in zip(out, taps)]
  x = lax.pad(x, jnp.zeros((), x.dtype), (
      (0, 0, 0), (pads[0][0], ends[0] - pads[0][0] - x.shape[1], 0),
      (pads[1][0], ends[1] - pads[1][0] - x.shape[2], 0), (0, 0, 0)))
  if s == 1:
    return conv2d_valid(x, kernel)
  kernel = jnp.pad(kernel, ((0, s * taps[0] - kh), (0, s * taps[1] - kw),
                            (0, 0), (0, 0)))
  kernel = kernel.reshape(taps[0], s, taps[1], s, c, o)
  kernel = kernel.transpose(0, 2, 1, 3, 4, 5).reshape(taps[0], taps[1],
                                                      s * s * c, o)
  return conv2d_valid(space_to_depth(x, s), kernel)


class Conv(nn.Module):
  """Drop-in for `nn.Conv` on NHWC images, trained by faster XLA:CPU kernels.

  Same parameters as `nn.Conv` (`kernel: [kh, kw, C_in, features]`,
  `bias: [features]`, same initialisers), and as the class is also called
  `Conv`, auto-named instances get the same names (`Conv_0`, ...), so the
  param trees are identical. Supports stride 1, or equal strides via
  space-to-depth (see `conv2d`); no dilation or feature groups.

  Input `[B, H, W, C_in]` -> output `[B, out_h, out_w, features]`.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features))
    y = conv2d(x, kernel, tuple(self.strides), self.padding)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


def conv_transpose_4x4_stride2(x: Array, kernel: Array) -> Array:
  """`lax.conv_transpose(x, kernel, (2, 2), "SAME")` for a 4x4 kernel.

  Each input pixel `i` adds `x[i] @ kernel[t]` to output pixel `2 i + 2 - t`
  (per axis, `t` = 0..3). So all taps come out of one matmul,
  `[B*H*W, C_in] @ [C_in, 16 C_out]`, with no multiplications by zero, and
  output `2 a + p` sums taps `t = p` of input `a + p - 1` and `t = p + 2` of
  input `a + p` (col2im: 16 shifted adds, 4 per output phase). Its gradients
  are the same matmul transposed and shifted slices.

  Args:
    x: [B, H, W, C_in].
    kernel: [4, 4, C_in, C_out] (the `nn.ConvTranspose` kernel).

  Returns:
    [B, 2H, 2W, C_out].
  """
  b, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  # [B, H, W, 16 C_out] -> [B, H + 2, W + 2, 4 (t_h), 4 (t_w), C_out]
  taps = jnp.dot(x, kernel.transpose(2, 0, 1, 3).reshape(c_in, 16 * c_out))
  taps = taps.reshape(b, h, w, 4, 4, c_out)
  taps = jnp.pad(taps, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
  rows = []
  for p in (0, 1):
    cols = []
    for q in (0, 1):
      cols.append(sum(taps[:, p + u:p + u + h, q + v:q + v + w, p + 2 * u,
                           q + 2 * v, :]
                      for u in (0, 1) for v in (0, 1)))
    rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2 (q), C_out]
  y = jnp.stack(rows, axis=2)  # [B, H, 2 (p), W, 2 (q), C_out]
  return y.reshape(b, 2 * h, 2 * w, c_out)


class UpsampleConvTranspose(nn.Module):
  """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")`, fast.

  XLA:CPU runs the strided transposed convolution as a convolution over an
  input dilated with zeros, three quarters of which are multiplications by
  zero, and slowly at that. Here the same function is one matmul followed by
  shifted adds (`conv_transpose_4x4_stride2`). Parameters have the same names
  and shapes as `nn.ConvTranspose` (`kernel: [4, 4, C_in, C_out]`,
  `bias: [C_out]`), so the two are interchangeable (`tests/test_layers.py`
  checks equality).

  Input `[B, H, W, C_in]` -> output `[B, 2H, 2W, features]`.
  """
  features: int
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init,
                        (4, 4, x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    return conv_transpose_4x4_stride2(x, kernel) + bias


class ResidualStack(nn.Module):
  """Sonnet's VQ-VAE residual stack: `x + conv1x1(relu(conv3x3(relu(x))))`
  repeated, then a final ReLU. `[B, H, W, C] -> [B, H, W, C]`."""
  num_hiddens: int
  num_residual_hiddens: int
  num_residual_layers: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for _ in range(self.num_residual_layers):
      h = nn.relu(x)
      h = Conv(self.num_residual_hiddens, (3, 3), padding="SAME")(h)
      h = nn.relu(h)
      h = Conv(self.num_hiddens, (1, 1))(h)
      x = x + h
    return nn.relu(x)


def conv_stride2(features: int, name: str | None = None) -> Conv:
  """The encoder's 4x4 stride-2 'SAME' downsampling convolution (a `Conv`,
  computed as a 2x2 convolution on a space-to-depth input)."""
  return Conv(features, (4, 4), strides=(2, 2), padding="SAME", name=name)


__all__: Sequence[str] = ["Conv", "UpsampleConvTranspose", "ResidualStack",
                          "conv_stride2", "conv2d", "conv2d_valid",
                          "conv_transpose_4x4_stride2", "space_to_depth"]
