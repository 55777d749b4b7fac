"""The fast layers compute what the plain Flax layers compute, gradients too."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax.models import layers
from vqjax.models.vqvae import VQVAE

TOL = dict(rtol=1e-4, atol=1e-4)


def _assert_same_function(fast, plain, x, key=1):
  """Same params tree, same init, same outputs and gradients (input, params).

  Args:
    fast, plain: Flax modules taking one input x.
    x: their input.
  """
  init = lambda m: jax.jit(m.init)(jax.random.PRNGKey(key), x)
  variables, fast_variables = init(plain), init(fast)
  assert (jax.tree_util.tree_structure(variables)
          == jax.tree_util.tree_structure(fast_variables))
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables,
                         fast_variables)
  # Non-zero biases, so that the bias path is checked too.
  variables = jax.tree_util.tree_map(
      lambda v: v + 0.1 * jax.random.normal(jax.random.PRNGKey(7), v.shape),
      variables)

  @jax.jit
  def outputs_and_grads(variables, x):
    y_plain, vjp_plain = jax.vjp(plain.apply, variables, x)
    y_fast, vjp_fast = jax.vjp(fast.apply, variables, x)
    cotangent = jax.random.normal(jax.random.PRNGKey(3), y_plain.shape)
    return y_plain, y_fast, vjp_plain(cotangent), vjp_fast(cotangent)

  y_plain, y_fast, g_plain, g_fast = outputs_and_grads(variables, x)
  assert y_plain.shape == y_fast.shape
  np.testing.assert_allclose(y_fast, y_plain, **TOL)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, **TOL),
                         g_fast, g_plain)


def _input(shape, key=0):
  return jax.random.normal(jax.random.PRNGKey(key), shape)


@pytest.mark.parametrize("shape,features", [
    ((2, 7, 7, 5), 3), ((1, 3, 5, 4), 6), ((2, 14, 14, 8), 1),
    ((2, 1, 1, 3), 2)])
def test_upsample_matches_conv_transpose(shape, features):
  _assert_same_function(
      layers.UpsampleConvTranspose(features),
      nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME"),
      _input(shape))


@pytest.mark.parametrize("shape", [
    (2, 28, 28, 1), (2, 14, 14, 6), (1, 7, 7, 3), (2, 9, 6, 2), (1, 2, 2, 4),
    (1, 1, 1, 3)])
def test_downsample_matches_strided_conv(shape):
  _assert_same_function(
      layers.conv_stride2(5),
      nn.Conv(5, (4, 4), strides=(2, 2), padding="SAME"), _input(shape))


@pytest.mark.parametrize("kernel,strides,padding,shape", [
    ((3, 3), (1, 1), "SAME", (2, 7, 7, 70)),     # XLA conv forward
    ((3, 3), (1, 1), "SAME", (2, 6, 5, 3)),      # im2col forward
    ((1, 1), (1, 1), "SAME", (2, 7, 7, 6)),      # matmul
    ((2, 3), (1, 1), "VALID", (1, 6, 8, 4)),
    ((3, 3), (1, 1), ((2, 0), (1, 3)), (1, 5, 5, 2)),
    ((3, 3), (2, 2), "SAME", (2, 9, 8, 3)),      # odd kernel, stride 2
    ((5, 5), (3, 3), "VALID", (1, 11, 13, 2)),   # stride 3
    ((4, 4), (2, 2), ((0, 3), (2, 1)), (1, 8, 7, 2)),
])
def test_conv_matches_nn_conv(kernel, strides, padding, shape):
  _assert_same_function(
      layers.Conv(4, kernel, strides=strides, padding=padding),
      nn.Conv(4, kernel, strides=strides, padding=padding), _input(shape))


class _PlainEncoder(nn.Module):
  """The VQ-VAE encoder written with `nn.Conv` only."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (4, 4), strides=(2, 2), padding="SAME")(x))
    x = nn.relu(nn.Conv(16, (4, 4), strides=(2, 2), padding="SAME")(x))
    x = nn.Conv(16, (3, 3), padding="SAME")(x)
    return _PlainStack()(x)


class _PlainStack(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(x)
    h = nn.relu(nn.Conv(8, (3, 3), padding="SAME")(h))
    return nn.relu(x + nn.Conv(16, (1, 1))(h))


class _PlainDecoder(nn.Module):
  """The VQ-VAE decoder written with `nn.Conv` and `nn.ConvTranspose`."""

  @nn.compact
  def __call__(self, z):
    x = nn.Conv(16, (3, 3), padding="SAME")(z)
    x = _PlainStack()(x)
    x = nn.relu(nn.ConvTranspose(8, (4, 4), (2, 2), padding="SAME")(x))
    return nn.ConvTranspose(1, (4, 4), (2, 2), padding="SAME")(x)


def _swap(name, prefixes):
  """'Prefix_3' -> 'NewPrefix_3' for the prefixes in `prefixes`."""
  prefix, _, index = name.rpartition("_")
  return f"{prefixes.get(prefix, prefix)}_{index}"


def test_vqvae_params_and_function_match_plain_flax_layers():
  model = VQVAE(num_hiddens=16, num_residual_hiddens=8, num_residual_layers=1,
                num_codes=8, code_dim=4, use_ema=False)
  x = _input((2, 28, 28, 1))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  plain_to_fast = {"_PlainStack": "ResidualStack",
                   "ConvTranspose": "UpsampleConvTranspose"}
  rename = lambda p: {_swap(k, plain_to_fast): v for k, v in p.items()}
  encoder, decoder = _PlainEncoder(), _PlainDecoder()
  enc_params = rename(encoder.init(jax.random.PRNGKey(1), x)["params"])
  z = model.apply({"params": params}, x, method=VQVAE.encode)
  dec_params = rename(decoder.init(jax.random.PRNGKey(1), z)["params"])
  shapes = lambda t: jax.tree_util.tree_map(jnp.shape, t)
  assert shapes(params["encoder"]) == shapes(enc_params)
  assert shapes(params["decoder"]) == shapes(dec_params)

  fast_to_plain = {v: k for k, v in plain_to_fast.items()}
  unrename = lambda p: {_swap(k, fast_to_plain): v for k, v in p.items()}

  def plain(params, x):
    h = encoder.apply({"params": unrename(params["encoder"])}, x)
    z = model.apply({"params": params}, h, method=lambda m, h:
                    m.pre_quantization(h))
    return decoder.apply({"params": unrename(params["decoder"])}, z)

  def fast(params, x):
    return model.apply({"params": params},
                       model.apply({"params": params}, x, method=VQVAE.encode),
                       method=VQVAE.decode)

  np.testing.assert_allclose(fast(params, x), plain(params, x), **TOL)
  loss = lambda f: lambda p: jnp.mean(jnp.sin(3 * f(p, x)))
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, **TOL),
      jax.grad(loss(fast))(params), jax.grad(loss(plain))(params))


def test_space_to_depth_layout():
  x = jnp.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
  y = layers.space_to_depth(x, 2)
  assert y.shape == (2, 2, 3, 12)
  # Channel (p, q, c) of block (i, j) is pixel (2i + p, 2j + q), channel c.
  np.testing.assert_array_equal(y[1, 1, 2].reshape(2, 2, 3),
                                x[1, 2:4, 4:6, :])
