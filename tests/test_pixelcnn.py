"""Gated PixelCNN tests: causality without a blind spot, conditioning, shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_pixelcnn_params
from vqjax.models.pixelcnn import GatedPixelCNN

V = 3  # categories per channel in the causality tests
H = W = 5


def random_params(model, *args, seed=0):
  # Open ReLUs into the head: a dead ReLU would legitimately zero gradients.
  return random_pixelcnn_params(model, *args, seed=seed, open_relus=True)


def _apply(model, params, *args, method=None):
  return jax.jit(functools.partial(model.apply, method=method))(params, *args)


def _assert_every_logit_reads_label_and_cond(model, params, x, labels, cond):
  """Another label, or another spatial condition, changes every logit."""
  logits = _apply(model, params, x, labels, cond)
  other_label = _apply(model, params, x, jnp.array([2]), cond)
  other_cond = _apply(model, params, x, labels, cond + 1.0)
  assert np.abs(logits - other_label).min() > 0
  assert np.abs(logits - other_cond).min() > 0


def _dependencies(model, params, labels=None, cond=None, seed=0):
  """dep[p, q] = |d logits at raster index p / d one-hot at q|, summed.

  Raster index of (i, j, c) is (i * W + j) * C + c. Returns [HWC, HWC].
  """
  c = model.num_channels
  rng = np.random.default_rng(seed)
  onehot = jax.nn.one_hot(rng.integers(0, V, (1, H, W, c)), V)
  proj = rng.standard_normal((H, W, c, V)).astype(np.float32)

  def f(onehot):
    logits = model.apply(params, onehot, labels, cond,
                         method=GatedPixelCNN.logits_from_onehot)
    return (logits[0] * proj).sum(-1)  # [H, W, C]

  jac = jax.jit(jax.jacrev(f))(onehot)  # [H, W, C, 1, H, W, C, V]
  n = H * W * c
  return np.abs(np.asarray(jac)).sum(axis=(3, -1)).reshape(n, n)


def _receptive_field(num_channels, num_layers, kernel_size):
  """rf[p, q]: raster position q is earlier than p and within reach.

  Vertical reach upwards: d + 1 rows from layer 0, d more per later layer.
  Column reach: d per layer each side (vertical), d per layer leftwards in
  the current row (horizontal); d = kernel_size // 2.
  """
  d = kernel_size // 2
  up = d + 1 + num_layers * d
  side = (num_layers + 1) * d
  c = num_channels
  n = H * W * c
  rf = np.zeros((n, n), bool)
  for p in range(n):
    i, j = p // (W * c), (p // c) % W
    for q in range(p):
      i2, j2 = q // (W * c), (q // c) % W
      if i2 == i:
        rf[p, q] = j2 == j or j - j2 <= side
      else:
        rf[p, q] = i - i2 <= up and abs(j - j2) <= side
  return rf


def _check_causal(dep, rf):
  n = dep.shape[0]
  later = np.triu(np.ones((n, n), bool))  # q >= p: same or later position
  assert np.all(dep[later] == 0), "a logit sees a same-or-later position"
  assert np.all(dep[rf] > 0), "a logit misses an earlier position in reach"
  assert np.all(dep[~rf & ~later] == 0), "reach is larger than computed"


@pytest.mark.parametrize("num_channels", [1, 3])
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("num_layers", [1, 2, 4])
def test_causal_without_blind_spot(num_layers, kernel_size, num_channels):
  model = GatedPixelCNN(num_values=V, num_channels=num_channels, features=6,
                        num_layers=num_layers, kernel_size=kernel_size,
                        head_features=6)
  x = jnp.zeros((1, H, W, num_channels), jnp.int32)
  params = random_params(model, x, seed=1)
  dep = _dependencies(model, params)
  _check_causal(dep, _receptive_field(num_channels, num_layers, kernel_size))


@pytest.mark.parametrize("num_layers,kernel_size", [(4, 3), (1, 5)])
def test_deep_enough_model_sees_all_earlier_positions(num_layers, kernel_size):
  """Earlier pixels past the blind-spot wedge (up-right) are all seen."""
  rf = _receptive_field(3, num_layers, kernel_size)
  assert np.array_equal(rf, np.tril(np.ones_like(rf), k=-1))
  model = GatedPixelCNN(num_values=V, num_channels=3, features=6,
                        num_layers=num_layers, kernel_size=kernel_size,
                        head_features=6)
  x = jnp.zeros((1, H, W, 3), jnp.int32)
  params = random_params(model, x, seed=2)
  dep = _dependencies(model, params, seed=3)
  n = dep.shape[0]
  assert np.all((dep > 0) == np.tril(np.ones((n, n), bool), k=-1))


def test_conditioning_is_causal_and_matters():
  c, num_classes, cond_features = 3, 4, 2
  model = GatedPixelCNN(num_values=V, num_channels=c, features=6, num_layers=2,
                        kernel_size=3, head_features=6, num_classes=num_classes,
                        cond_features=cond_features)
  x = jnp.zeros((1, H, W, c), jnp.int32)
  labels = jnp.array([1])
  cond = np.random.default_rng(5).standard_normal(
      (1, H, W, cond_features)).astype(np.float32)
  params = random_params(model, x, labels, cond, seed=4)
  dep = _dependencies(model, params, labels, cond)
  _check_causal(dep, _receptive_field(c, 2, 3))

  _assert_every_logit_reads_label_and_cond(model, params, x, labels, cond)


def test_missing_conditioning_raises():
  model = GatedPixelCNN(num_values=V, features=4, num_layers=1, kernel_size=3,
                        head_features=4, num_classes=3)
  x = jnp.zeros((1, 3, 3, 1), jnp.int32)
  params = random_params(model, x, jnp.array([0]))
  with pytest.raises(ValueError, match="labels"):
    _apply(model, params, x)


@pytest.mark.parametrize("num_channels", [1, 3])
def test_shapes_dtypes_and_onehot_path(num_channels):
  b, h, w, v = 2, 4, 3, 7
  model = GatedPixelCNN(num_values=v, num_channels=num_channels, features=6,
                        num_layers=2, kernel_size=5, head_features=6)
  x = np.random.default_rng(0).integers(0, v, (b, h, w, num_channels))
  params = random_params(model, x)
  logits = _apply(model, params, x)
  assert logits.shape == (b, h, w, num_channels, v)
  assert logits.dtype == jnp.float32
  from_onehot = _apply(model, params, jax.nn.one_hot(x, v),
                       method=GatedPixelCNN.logits_from_onehot)
  np.testing.assert_allclose(from_onehot, logits, atol=1e-5)


def test_bfloat16_compute_returns_float32_logits():
  model = GatedPixelCNN(num_values=5, features=8, num_layers=1, kernel_size=3,
                        head_features=8, dtype=jnp.bfloat16)
  x = jnp.zeros((1, 3, 3, 1), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  logits = _apply(model, random_params(model, x), x)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_init():
  model = GatedPixelCNN(num_values=5, num_channels=3, features=6, num_layers=1,
                        kernel_size=3, head_features=6, num_classes=2,
                        cond_features=2)
  x = jnp.zeros((1, 3, 3, 3), jnp.int32)
  # An "rbg" key: threefry initializers take seconds to compile on XLA:CPU.
  key = jax.random.key(0, impl="rbg")
  params = jax.jit(model.init)(key, x, jnp.array([0]), jnp.zeros((1, 3, 3, 2)))
  assert params["params"]["embedding"].shape == (3, 5, 2)
  assert params["params"]["head_out_kernel"].shape == (6, 15)
  assert "res_kernel" not in params["params"]["layer_1"]  # last layer


def test_features_must_divide_into_channel_groups():
  model = GatedPixelCNN(num_values=4, num_channels=3, features=8)
  with pytest.raises(ValueError, match="divisible"):
    jax.eval_shape(model.init, jax.random.key(0),
                   jnp.zeros((1, 2, 2, 3), jnp.int32))


@pytest.mark.parametrize("num_channels", [1, 3])
def test_xla_cpu_kernels_compute_the_same_logits_and_gradients(num_channels):
  """The CPU seam computes the gated layers' convolutions by Winograd: same
  logits and parameter gradients as the direct convolutions, and causal up to
  float32 rounding (Winograd mixes a tile's inputs, so a later position's
  exact zero coefficient is only ~1e-7 of the weights; training alone uses it,
  evaluation and sampling stay direct)."""
  from vqjax import xla_cpu  # pylint: disable=g-import-not-at-top
  fields = dict(num_values=V, num_channels=num_channels, features=12,
                num_layers=2, kernel_size=5, head_features=12, num_classes=3)
  model = GatedPixelCNN(**fields)
  fast = GatedPixelCNN(**fields, valid_conv=xla_cpu.valid_conv)
  rng = np.random.default_rng(1)
  x = rng.integers(0, V, (2, 7, 7, num_channels))
  labels = jnp.array([0, 2])
  params = random_params(model, x, labels)
  cotangent = rng.standard_normal((2, 7, 7, num_channels, V)).astype(np.float32)

  def value_and_grad(winograd: bool):
    def loss(params):
      return jnp.vdot((fast if winograd else model).apply(params, x, labels),
                      cotangent)
    return jax.jit(jax.value_and_grad(loss))(params)

  (value, grads), (value_direct, grads_direct) = (value_and_grad(True),
                                                  value_and_grad(False))
  np.testing.assert_allclose(value, value_direct, rtol=1e-5)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    g_direct = functools.reduce(lambda t, k: t[k.key], path, grads_direct)
    scale = max(float(np.abs(g_direct).max()), 1e-6)
    np.testing.assert_allclose(np.asarray(g) / scale,
                               np.asarray(g_direct) / scale, atol=2e-5,
                               err_msg=jax.tree_util.keystr(path))

  dep = _dependencies(fast, params, labels=labels[:1])
  dep_direct = _dependencies(model, params, labels=labels[:1])
  n = dep.shape[0]
  later = np.triu(np.ones((n, n), bool))
  assert np.all(dep_direct[later] == 0)
  assert dep[later].max() < 1e-5 * dep.max()
  np.testing.assert_allclose(dep[~later], dep_direct[~later],
                             atol=1e-5 * dep.max())


def _attention_model(**fields):
  return GatedPixelCNN(**{**dict(num_values=V, features=8, num_layers=2,
                                 kernel_size=3, head_features=8,
                                 attention_every=1, attention_heads=2),
                          **fields})


def test_attention_is_causal_and_sees_every_earlier_position():
  """With attention after the first gated layer, every logit depends on
  every earlier position (beyond the convolutions' reach) and on no later
  one, with and without class and spatial conditioning."""
  model = _attention_model(num_layers=1, num_classes=3, cond_features=2)
  x = jnp.zeros((1, H, W, 1), jnp.int32)
  labels = jnp.array([1])
  cond = np.random.default_rng(5).standard_normal((1, H, W, 2)).astype(
      np.float32)
  params = random_params(model, x, labels, cond, seed=6)
  dep = _dependencies(model, params, labels, cond)
  n = dep.shape[0]
  assert not _receptive_field(1, 1, 3).all(where=np.tril(
      np.ones((n, n), bool), k=-1))  # the convolutions alone miss some
  assert np.all((dep > 0) == np.tril(np.ones((n, n), bool), k=-1))

  _assert_every_logit_reads_label_and_cond(model, params, x, labels, cond)


def test_attention_needs_one_channel():
  model = _attention_model(num_channels=3, features=6)
  with pytest.raises(ValueError, match="num_channels == 1"):
    jax.eval_shape(model.init, jax.random.key(0),
                   jnp.zeros((1, 2, 2, 3), jnp.int32))


def test_dropout_acts_at_training_time_only():
  model = _attention_model(dropout=0.5)
  plain = _attention_model()
  x = np.random.default_rng(0).integers(0, V, (2, 4, 4, 1))
  params = random_params(model, x)
  evaluated = _apply(model, params, x)
  np.testing.assert_array_equal(evaluated, _apply(plain, params, x))
  train = jax.jit(lambda key: model.apply(params, x, train=True,
                                          rngs={"dropout": key}))
  a, b = train(jax.random.key(0)), train(jax.random.key(1))
  np.testing.assert_array_equal(a, train(jax.random.key(0)))
  assert np.abs(a - b).max() > 0 and np.abs(a - evaluated).max() > 0
