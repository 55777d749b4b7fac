"""The fast layers compute what the plain Flax layers compute, gradients too."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax.models import layers
from vqjax.models.vqvae import VQVAE

TOL = dict(rtol=1e-4, atol=1e-4)


def _assert_same_function(fast, plain, x):
  """Same params tree and shapes, same outputs and gradients (input, params).

  Args:
    fast, plain: Flax modules taking one input x [B, H, W, C].
    x: their input (a NumPy array).
  """
  shapes = lambda m: jax.eval_shape(m.init, jax.random.PRNGKey(0), x)
  assert shapes(fast) == shapes(plain)
  rng = np.random.default_rng(1)
  variables = jax.tree_util.tree_map(
      lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.3,
      shapes(plain))

  @jax.jit
  def outputs_and_grads(variables, x):
    y_plain, vjp_plain = jax.vjp(plain.apply, variables, x)
    y_fast, vjp_fast = jax.vjp(fast.apply, variables, x)
    cotangent = jnp.cos(jnp.arange(y_plain.size, dtype=jnp.float32)
                        ).reshape(y_plain.shape)
    return y_plain, y_fast, vjp_plain(cotangent), vjp_fast(cotangent)

  y_plain, y_fast, g_plain, g_fast = outputs_and_grads(variables, x)
  assert y_plain.shape == y_fast.shape
  np.testing.assert_allclose(y_fast, y_plain, **TOL)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, **TOL),
                         g_fast, g_plain)


def _input(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


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


@pytest.mark.parametrize("kernel,strides,padding,shape,features", [
    # Forward / input-gradient / kernel-gradient paths of `layers._conv_*`:
    ((3, 3), (1, 1), "SAME", (2, 7, 7, 70), 4),  # XLA conv; conv-form dW
    ((3, 3), (1, 1), "SAME", (2, 6, 5, 3), 4),   # im2col forward and dW
    ((1, 1), (1, 1), "SAME", (2, 7, 7, 6), 4),   # matmul, C_in > C_out
    ((1, 1), (1, 1), "SAME", (2, 3, 4, 2), 5),   # matmul, C_in < C_out
    ((2, 2), (1, 1), "VALID", (1, 6, 5, 20), 17),  # per-tap dW; padded dx
    ((3, 3), (1, 1), "VALID", (1, 6, 6, 9), 12),  # explicitly padded dx
    ((2, 3), (1, 1), "VALID", (1, 6, 8, 4), 4),
    ((3, 3), (1, 1), ((2, 0), (1, 3)), (1, 5, 5, 2), 4),
    ((3, 3), (2, 2), "SAME", (2, 9, 8, 3), 4),   # space-to-depth paths
    ((3, 3), (2, 2), "SAME", (1, 8, 8, 20), 6),
    ((5, 5), (3, 3), "VALID", (1, 11, 13, 2), 4),
    ((4, 4), (2, 2), ((0, 3), (2, 1)), (1, 8, 7, 2), 4),
])
def test_conv_matches_nn_conv(kernel, strides, padding, shape, features):
  _assert_same_function(
      layers.Conv(features, kernel, strides=strides, padding=padding),
      nn.Conv(features, kernel, strides=strides, padding=padding),
      _input(shape))


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
  """Encoder and decoder as used in the VQ-VAE vs. plain nn.Conv/ConvTranspose:
  same param tree, same reconstruction and gradients."""
  model = VQVAE(num_hiddens=16, num_residual_hiddens=8, num_residual_layers=1,
                num_codes=8, code_dim=4, use_ema=False)
  encoder, decoder = _PlainEncoder(), _PlainDecoder()
  x = _input((2, 28, 28, 1))
  key = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(model.init, key, x)["params"]
  plain_to_fast = {"_PlainStack": "ResidualStack",
                   "ConvTranspose": "UpsampleConvTranspose"}
  rename = lambda p: {_swap(k, plain_to_fast): v for k, v in p.items()}
  assert shapes["encoder"] == rename(
      jax.eval_shape(encoder.init, key, x)["params"])
  z = jax.ShapeDtypeStruct((2, 7, 7, 4), jnp.float32)
  assert shapes["decoder"] == rename(
      jax.eval_shape(decoder.init, key, z)["params"])

  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.2, shapes)
  fast_to_plain = {v: k for k, v in plain_to_fast.items()}
  unrename = lambda p: {_swap(k, fast_to_plain): v for k, v in p.items()}

  def plain(params):
    h = encoder.apply({"params": unrename(params["encoder"])}, x)
    z = nn.Conv(4, (1, 1)).apply({"params": params["pre_quantization"]}, h)
    return decoder.apply({"params": unrename(params["decoder"])}, z)

  def fast(params):
    z = model.apply({"params": params}, x, method=VQVAE.encode)
    return model.apply({"params": params}, z, method=VQVAE.decode)

  @jax.jit
  def outputs_and_grads(params):
    loss = lambda f: lambda p: jnp.mean(jnp.sin(3 * f(p)))
    return (fast(params), plain(params), jax.grad(loss(fast))(params),
            jax.grad(loss(plain))(params))

  y_fast, y_plain, g_fast, g_plain = outputs_and_grads(params)
  np.testing.assert_allclose(y_fast, y_plain, **TOL)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, **TOL),
                         g_fast, g_plain)


def test_space_to_depth_layout():
  x = jnp.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
  y = layers.space_to_depth(x, 2)
  assert y.shape == (2, 2, 3, 12)
  # Channel (p, q, c) of block (i, j) is pixel (2i + p, 2j + q), channel c.
  np.testing.assert_array_equal(y[1, 1, 2].reshape(2, 2, 3),
                                x[1, 2:4, 4:6, :])


def test_init_matches_flax_layers():
  x = _input((1, 8, 8, 3))
  key = jax.random.PRNGKey(4)
  pairs = [(layers.Conv(5, (3, 3)), nn.Conv(5, (3, 3))),
           (layers.conv_stride2(5), nn.Conv(5, (4, 4), (2, 2), "SAME")),
           (layers.UpsampleConvTranspose(5),
            nn.ConvTranspose(5, (4, 4), (2, 2), padding="SAME"))]
  both = jax.jit(lambda key: [(f.init(key, x), p.init(key, x))
                              for f, p in pairs])
  for fast, plain in both(key):
    jax.tree_util.tree_map(np.testing.assert_array_equal, fast, plain)


# The quantizer's fast paths against the plain formulations they replace.

def test_argmin_matches_jnp_argmin_with_ties_and_nans():
  from vqjax import quantizer as vq  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  d = rng.integers(0, 4, size=(50, 7)).astype(np.float32)  # many ties
  d[3, 5] = d[7, 0] = d[7, 4] = np.nan
  d[9] = np.inf
  np.testing.assert_array_equal(vq._argmin_last(jnp.asarray(d)),
                                jnp.argmin(jnp.asarray(d), axis=-1))
  z = rng.normal(size=(4, 6, 3)).astype(np.float32)
  codebook = rng.normal(size=(9, 3)).astype(np.float32)
  np.testing.assert_array_equal(
      jax.jit(vq.nearest_code)(z, codebook),
      jnp.argmin(vq.squared_distances(z, codebook), axis=-1))


def test_code_sums_match_one_hot_formulation():
  from vqjax import quantizer as vq  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  num_codes = 6
  indices = rng.integers(-2, num_codes + 2, size=(5, 4))  # some out of range
  weights = rng.uniform(size=(5, 4)).astype(np.float32)
  one_hot = jax.nn.one_hot(indices.reshape(-1), num_codes)
  np.testing.assert_allclose(
      vq.code_counts(indices, num_codes, weights=weights),
      (one_hot * weights.reshape(-1, 1)).sum(0), rtol=1e-6)
  np.testing.assert_allclose(vq.code_counts(indices, num_codes),
                             one_hot.sum(0), rtol=1e-6)
  z = rng.normal(size=(5, 4, 3)).astype(np.float32)
  state = vq.ema_init(rng.normal(size=(num_codes, 3)).astype(np.float32))
  new = vq.ema_update(state, z, indices, decay=0.9)
  sums = one_hot.T @ z.reshape(-1, 3)
  np.testing.assert_allclose(new.embed_sum, 0.1 * sums, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.cluster_size, 0.1 * one_hot.sum(0),
                             rtol=1e-6)
