"""Flax's convolution layers, computed by the XLA:CPU formulations.

`Conv` and `ConvTranspose` are `nn.Conv` and `nn.ConvTranspose` with the same
fields, parameters (names, shapes, initialisers) and auto-generated module
names, so a model built with them has the very parameter tree, and computes
the very function, of one built with Flax's own. Where a call falls outside
what the formulations here cover, the layer is Flax's, unchanged:

* `Conv`: NHWC images, a 2-D kernel, equal strides, any padding but
  'CIRCULAR' / 'CAUSAL' / 'REFLECT'; no dilation, groups or mask;
* `ConvTranspose`: a 4x4 kernel, stride 2 and 'SAME' padding;

both computing in float32 (the formulations are written and tested for it;
Winograd's transforms would lose bfloat16's few bits).

`valid_conv` is the Gated PixelCNN's VALID convolution and `nearest_code` the
quantizer's search, in the same spirit. `vqjax.models.build` injects all four
into the models (the Flax `conv: ModuleDef = nn.Conv` idiom) when
`config.model.kernels` picks `xla_cpu`; nothing here knows the models.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding

from vqjax.xla_cpu import convolutions
from vqjax.xla_cpu import winograd as winograd_lib
from vqjax.xla_cpu.quantizer import nearest_code

_UNSUPPORTED_PADDING = ("CIRCULAR", "CAUSAL", "REFLECT")


def _all_ones(value) -> bool:
  if value is None:
    return True
  values = (value,) if isinstance(value, int) else tuple(value)
  return all(v == 1 for v in values)


def _pair(value) -> tuple[int, int]:
  if value is None:
    return (1, 1)
  if isinstance(value, int):
    return (value, value)
  return tuple(value)


def _padding(module: nn.Module):
  padding = canonicalize_padding(module.padding, 2)
  if isinstance(padding, str):
    return None if padding in _UNSUPPORTED_PADDING else padding
  return [tuple(int(p) for p in pair) for pair in padding]


def _float32(module: nn.Module, x) -> bool:
  dtype = (module.dtype if module.dtype is not None else
           jnp.result_type(x.dtype, module.param_dtype))
  return (jnp.dtype(dtype) == jnp.float32 and
          jnp.dtype(module.param_dtype) == jnp.float32)


def _params(module: nn.Module, x):
  """The layer's `kernel [kh, kw, C_in, features]` and `bias` (or None),
  as Flax creates them."""
  kernel = module.param("kernel", module.kernel_init,
                        (*module.kernel_size, x.shape[-1], module.features),
                        module.param_dtype)
  bias = (module.param("bias", module.bias_init, (module.features,),
                       module.param_dtype) if module.use_bias else None)
  return kernel, bias


def _layer(module: nn.Module, x, compute):
  kernel, bias = _params(module, x)
  x, kernel, bias = module.promote_dtype(x, kernel, bias, dtype=module.dtype)
  y = compute(x, kernel)
  return y if bias is None else y + bias


class Conv(nn.Conv):
  """`nn.Conv`, computed by `vqjax.xla_cpu.convolutions` where it applies.

  Attributes:
    winograd: use Winograd convolutions where they apply (training steps);
      without, the direct formulations, which compile faster and need less
      memory (one-off encoding and decoding).
  """
  winograd: bool = True

  def _supported(self, x) -> bool:
    kernel_size = self.kernel_size
    strides = _pair(self.strides)
    return (_float32(self, x) and
            not isinstance(kernel_size, int) and len(kernel_size) == 2 and
            x.ndim == 4 and strides[0] == strides[1] and
            _all_ones(self.input_dilation) and
            _all_ones(self.kernel_dilation) and
            self.feature_group_count == 1 and self.mask is None and
            self.conv_general_dilated is None and
            self.conv_general_dilated_cls is None and
            _padding(self) is not None)

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if not self._supported(inputs):
      return super().__call__(inputs)
    return _layer(self, inputs, lambda x, k: convolutions.conv2d(
        x, k, _pair(self.strides), _padding(self), self.winograd))


class ConvTranspose(nn.ConvTranspose):
  """`nn.ConvTranspose`, computed by `vqjax.xla_cpu.convolutions` for the
  4x4 stride-2 'SAME' layers of the VQ-VAE's decoder. `winograd` as `Conv`'s.
  """
  winograd: bool = True

  def _supported(self, x) -> bool:
    return (_float32(self, x) and not isinstance(self.kernel_size, int) and
            tuple(self.kernel_size) == (4, 4) and x.ndim == 4 and
            _pair(self.strides) == (2, 2) and
            canonicalize_padding(self.padding, 2) == "SAME" and
            _all_ones(self.kernel_dilation) and self.mask is None and
            not self.transpose_kernel)

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if not self._supported(inputs):
      return super().__call__(inputs)
    return _layer(self, inputs, lambda x, k:
                  convolutions.conv_transpose_4x4_stride2_same(
                      x, k, self.winograd))


def valid_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The VALID NHWC convolution `x [B, H, W, I]`, `kernel [kh, kw, I, O]`,
  by Winograd's algorithm where it applies (float32, at most
  `winograd.MAX_TAPS` taps per axis), else by XLA's convolution.

  Winograd's rounding leaves a later position's coefficient at ~1e-7 rather
  than exactly 0, so inject it into training steps only: a PixelCNN's
  evaluation and sampling want exactly causal, direct convolutions.
  """
  valid = ((0, 0), (0, 0))
  if (x.dtype == kernel.dtype == jnp.float32 and
      winograd_lib.supports(kernel.shape, valid)):
    return winograd_lib.conv(x, kernel, valid)
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


__all__ = ["Conv", "ConvTranspose", "valid_conv", "nearest_code"]
