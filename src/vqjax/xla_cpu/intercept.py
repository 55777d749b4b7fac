"""Flax's own layers, computed by the XLA:CPU formulations of this package.

Inside `with kernels():`, every call of

* `nn.Conv` on NHWC images (any kernel size, equal strides, any padding but
  'CIRCULAR' / 'CAUSAL' / 'REFLECT'; no dilation, groups or mask),
* `nn.ConvTranspose` with a 4x4 kernel, stride 2 and 'SAME' padding,

computing in float32, and of

* `VectorQuantizer.nearest_code`,
* `GatedLayer.conv` in float32 (the Gated PixelCNN's vertical and horizontal
  convolutions; only with `winograd`, else XLA's own convolution),

made while tracing a model is computed by `vqjax.xla_cpu.convolutions` /
`vqjax.xla_cpu.winograd` / `vqjax.xla_cpu.quantizer` instead, reading and
creating the very parameters the layer would (same names, shapes and
initialisers). Any other call goes to Flax unchanged. So the models are
written with Flax's layers and a checkpoint is the same whatever computed it.

This is a Flax method interceptor (`nn.intercept_methods`): it acts while a
function is traced, so enter it around `model.apply` inside the jitted step.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding

from vqjax.models.pixelcnn import GatedLayer
from vqjax.models.vector_quantizer import VectorQuantizer
from vqjax.xla_cpu import convolutions
from vqjax.xla_cpu import winograd as winograd_lib
from vqjax.xla_cpu import quantizer as cpu_quantizer

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
  """Whether the layer computes in float32 (the formulations here are written
  and tested for it; Winograd's transforms would lose bfloat16's few bits)."""
  dtype = (module.dtype if module.dtype is not None else
           jnp.result_type(x.dtype, module.param_dtype))
  return (jnp.dtype(dtype) == jnp.float32 and
          jnp.dtype(module.param_dtype) == jnp.float32)


def _conv_supported(module: nn.Conv, x) -> bool:
  kernel_size = module.kernel_size
  strides = _pair(module.strides)
  return (_float32(module, x) and
          not isinstance(kernel_size, int) and len(kernel_size) == 2 and
          x.ndim == 4 and strides[0] == strides[1] and
          _all_ones(module.input_dilation) and
          _all_ones(module.kernel_dilation) and
          module.feature_group_count == 1 and module.mask is None and
          module.conv_general_dilated is None and
          module.conv_general_dilated_cls is None and
          _padding(module) is not None)


def _transpose_supported(module: nn.ConvTranspose, x) -> bool:
  return (_float32(module, x) and not isinstance(module.kernel_size, int) and
          tuple(module.kernel_size) == (4, 4) and x.ndim == 4 and
          _pair(module.strides) == (2, 2) and
          canonicalize_padding(module.padding, 2) == "SAME" and
          _all_ones(module.kernel_dilation) and module.mask is None and
          not module.transpose_kernel)


def _params(module: nn.Module, x):
  """The layer's `kernel [kh, kw, C_in, features]` and `bias` (or None),
  as Flax creates them."""
  kernel = module.param("kernel", module.kernel_init,
                        (*module.kernel_size, x.shape[-1], module.features),
                        module.param_dtype)
  bias = (module.param("bias", module.bias_init, (module.features,),
                       module.param_dtype) if module.use_bias else None)
  return kernel, bias


def _layer(module: nn.Module, x, compute, winograd: bool):
  kernel, bias = _params(module, x)
  x, kernel, bias = module.promote_dtype(x, kernel, bias, dtype=module.dtype)
  y = compute(x, kernel, winograd)
  return y if bias is None else y + bias


def _conv(module: nn.Conv, x, winograd: bool):
  return _layer(module, x, lambda x, k, w: convolutions.conv2d(
      x, k, _pair(module.strides), _padding(module), w), winograd)


def _conv_transpose(module: nn.ConvTranspose, x, winograd: bool):
  return _layer(module, x, convolutions.conv_transpose_4x4_stride2_same,
                winograd)


def _interceptor(next_fun, args, kwargs, context, *, winograd: bool):
  module, method = context.module, context.method_name
  if method == "__call__" and len(args) == 1 and not kwargs:
    (x,) = args
    if type(module) is nn.Conv and _conv_supported(module, x):  # pylint: disable=unidiomatic-typecheck
      return _conv(module, x, winograd)
    if (type(module) is nn.ConvTranspose and  # pylint: disable=unidiomatic-typecheck
        _transpose_supported(module, x)):
      return _conv_transpose(module, x, winograd)
  if method == "nearest_code" and isinstance(module, VectorQuantizer):
    return cpu_quantizer.nearest_code(*args, **kwargs)
  if method == "conv" and isinstance(module, GatedLayer) and winograd:
    x, kernel = args
    valid = ((0, 0), (0, 0))
    if (x.dtype == kernel.dtype == jnp.float32 and
        winograd_lib.supports(kernel.shape, valid)):
      return winograd_lib.conv(x, kernel, valid)
  return next_fun(*args, **kwargs)


@contextlib.contextmanager
def kernels(winograd: bool = True) -> Iterator[None]:
  """Computes Flax's layers by the XLA:CPU formulations while active.

  Args:
    winograd: use Winograd convolutions where they apply (training); without,
      the direct formulations, which compile faster and need less memory
      (one-off encoding and decoding).
  """
  with nn.intercept_methods(functools.partial(_interceptor,
                                              winograd=winograd)):
    yield


__all__ = ["kernels"]
