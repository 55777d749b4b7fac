"""Winograd convolutions compute the direct convolution's function."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vqjax import xla_cpu
from vqjax.xla_cpu import convolutions, winograd

_DIMS = ("NHWC", "HWIO", "NHWC")


def _direct(x, kernel, padding):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                  dimension_numbers=_DIMS,
                                  precision=lax.Precision.HIGHEST)


def _close(a, b, scale_tol=2e-5):
  """Equal up to float32 rounding, relative to the larger array's scale."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  scale = max(np.abs(b).max(), 1e-6)
  np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=scale_tol)


def test_matrices_are_lavin_and_grays_f4x4_3x3():
  """The Toom-Cook construction reproduces the published F(4x4, 3x3)."""
  b_t, g, a_t = winograd.matrices(4, 3)
  np.testing.assert_allclose(b_t, [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0],
                                   [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                                   [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])
  np.testing.assert_allclose(g, [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6],
                                 [-1 / 6, 1 / 6, -1 / 6],
                                 [1 / 24, 1 / 12, 1 / 6],
                                 [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
  np.testing.assert_allclose(a_t, [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
                                   [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])


@pytest.mark.parametrize("r", [1, 2, 3, 4, 5])
def test_one_dimensional_algorithm_is_a_correlation(r):
  """y = A^T [(G g) . (B^T d)] is y_i = sum_k g_k d_{i+k}, exactly (float64)."""
  m = winograd.tile_size(r)
  b_t, g, a_t = (np.array(x) for x in winograd.matrices(m, r))
  rng = np.random.default_rng(r)
  d, w = rng.normal(size=m + r - 1), rng.normal(size=r)
  expected = [np.dot(w, d[i:i + r]) for i in range(m)]
  np.testing.assert_allclose(a_t @ ((g @ w) * (b_t @ d)), expected,
                             rtol=1e-12, atol=1e-12)


CASES = [
    # (input shape, kernel size, padding)
    ((2, 7, 7, 16), 3, ((1, 1), (1, 1))),   # the VQ-VAE's 'SAME' 3x3 on 7x7
    ((1, 9, 6, 5), 3, ((0, 2), (2, 0))),    # asymmetric, non-square
    ((2, 13, 11, 3), 3, ((0, 0), (0, 0))),  # 'VALID', several tiles
    ((2, 8, 8, 12), 2, ((0, 0), (0, 0))),   # the space-to-depth 4x4 stride 2
    ((1, 5, 8, 4), 2, ((0, 1), (1, 0))),
    ((3, 4, 4, 6), 3, ((2, 2), (2, 2))),    # 'full'
    ((2, 9, 11, 8), (3, 5), ((0, 0), (0, 0))),  # the Gated PixelCNN's vertical
    ((2, 7, 9, 8), (1, 3), ((0, 0), (0, 0))),   # ... and horizontal kernels
    ((1, 10, 7, 3), (5, 2), ((1, 3), (0, 2))),
    ((2, 6, 9, 4), (4, 4), ((0, 0), (1, 1))),
]


@pytest.mark.parametrize("shape,r,padding", CASES)
def test_conv_and_gradients_equal_direct_convolution(shape, r, padding):
  kx, kk, kd = jax.random.split(jax.random.PRNGKey(sum(shape)), 3)
  x = jax.random.normal(kx, shape)
  rh, rw = (r, r) if isinstance(r, int) else r
  kernel = jax.random.normal(kk, (rh, rw, shape[-1], 7))
  y = winograd.conv(x, kernel, padding)
  y_direct = _direct(x, kernel, padding)
  _close(y, y_direct)

  # A random cotangent: checks the explicit transposes of every transform.
  cotangent = jax.random.normal(kd, y_direct.shape)
  grads = jax.grad(lambda x, k: jnp.vdot(winograd.conv(x, k, padding),
                                         cotangent), (0, 1))(x, kernel)
  grads_direct = jax.grad(lambda x, k: jnp.vdot(_direct(x, k, padding),
                                                cotangent), (0, 1))(x, kernel)
  for a, b in zip(grads, grads_direct):
    _close(a, b)


def test_conv_is_jittable_and_rejects_what_it_does_not_support():
  x = jnp.ones((1, 7, 7, 4))
  y = jax.jit(lambda x, k: winograd.conv(x, k, ((1, 1), (1, 1))))(
      x, jnp.ones((3, 3, 4, 2)))
  assert y.shape == (1, 7, 7, 2)
  assert not winograd.supports((6, 3, 4, 2), ((0, 0), (0, 0)))
  assert not winograd.supports((1, 1, 4, 2), ((0, 0), (0, 0)))
  assert not winograd.supports((3, 3, 4, 2), ((-1, 0), (0, 0)))
  with pytest.raises(ValueError, match="Winograd conv takes"):
    winograd.conv(x, jnp.ones((3, 3, 4, 2)), ((-1, 1), (1, 1)))


def _value_and_grads(module, params, x, cotangent, winograd=None):
  """`module.apply(params, x)` and the gradients of `<output, cotangent>`,
  computed by Flax's layer `module` (`winograd=None`) or by its
  `vqjax.xla_cpu` twin."""
  if winograd is not None:
    cls = {nn.Conv: xla_cpu.Conv,
           nn.ConvTranspose: xla_cpu.ConvTranspose}[type(module)]
    module = cls(**{f.name: getattr(module, f.name)
                    for f in dataclasses.fields(module)
                    if f.name not in ("parent", "name")}, winograd=winograd)
  apply = module.apply

  loss = lambda p, x: jnp.vdot(apply(p, x), cotangent)
  return jax.jit(lambda p, x: (apply(p, x), jax.grad(loss, (0, 1))(p, x)))(
      params, x)


@pytest.mark.parametrize("kernel_size,strides", [((3, 3), (1, 1)),
                                                 ((4, 4), (2, 2))])
def test_conv_layer_with_and_without_winograd(kernel_size, strides):
  """`nn.Conv` on deep enough inputs, by the CPU kernels with Winograd and
  with the direct formulations, against Flax: results and the parameter and
  input gradients."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 14, 14, 32))
  module = nn.Conv(24, kernel_size, strides=strides, padding="SAME")
  params = module.init(jax.random.PRNGKey(1), x)
  out_shape = jax.eval_shape(module.apply, params, x).shape
  cotangent = jax.random.normal(jax.random.PRNGKey(2), out_shape)
  y_fast, g_fast = _value_and_grads(module, params, x, cotangent, True)
  for winograd in (False, None):
    y, g = _value_and_grads(module, params, x, cotangent, winograd)
    _close(y_fast, y)
    jax.tree.map(_close, g_fast, g)


@pytest.mark.parametrize("shape", [(2, 7, 7, 32), (1, 4, 6, 20)])
def test_transposed_conv_by_winograd_equals_flax(shape):
  """`nn.ConvTranspose` by the CPU kernels (Winograd for >= 16 output
  channels) against Flax: output and gradients, with a random cotangent."""
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  module = nn.ConvTranspose(24, (4, 4), strides=(2, 2), padding="SAME")
  params = module.init(jax.random.PRNGKey(1), x)
  cotangent = jax.random.normal(jax.random.PRNGKey(2),
                                (shape[0], 2 * shape[1], 2 * shape[2], 24))
  y_fast, g_fast = _value_and_grads(module, params, x, cotangent, True)
  y_ref, g_ref = _value_and_grads(module, params, x, cotangent)
  _close(y_fast, y_ref)
  jax.tree.map(_close, g_fast, g_ref)
  direct = convolutions.conv_transpose_4x4_stride2(x, params["params"]["kernel"])
  _close(y_fast - params["params"]["bias"], direct)
