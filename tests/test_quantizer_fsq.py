"""FSQ against the paper's formulas (NumPy, float64) and its index maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizer as vq

LEVELS = [[8, 5, 5, 5], [8, 6, 5], [7, 5, 5, 5, 5]]


def _bound_np(z, levels, eps=1e-3):
  levels = np.asarray(levels, np.float64)
  half_l = (levels - 1) * (1 + eps) / 2
  offset = np.where(levels % 2 == 0, 0.5, 0.0)
  shift = np.arctanh(offset / half_l)
  return np.tanh(z + shift) * half_l - offset, half_l, shift


@pytest.mark.parametrize("levels", LEVELS)
def test_bound_and_quantize_match_the_formulas(levels):
  rng = np.random.default_rng(len(levels))
  z = rng.normal(scale=2.0, size=(64, len(levels)))
  bound, _, _ = _bound_np(z, levels)
  np.testing.assert_allclose(vq.fsq_bound(jnp.asarray(z, jnp.float32), levels),
                             bound, rtol=1e-5, atol=1e-5)
  codes = np.asarray(vq.fsq_quantize(jnp.asarray(z, jnp.float32), levels))
  half_width = np.asarray(levels) // 2
  expected = (np.round(bound) / half_width).astype(np.float32)
  # Away from rounding boundaries (float32 vs float64), codes agree exactly.
  clear = np.abs(np.abs(bound - np.floor(bound)) - 0.5) > 1e-4
  np.testing.assert_array_equal(codes[clear], expected[clear])
  np.testing.assert_allclose(vq.fsq_bound(jnp.zeros((1, len(levels))),
                                         levels), 0.0, atol=1e-7)


@pytest.mark.parametrize("levels", LEVELS)
def test_each_channel_takes_exactly_its_levels(levels):
  z = np.linspace(-12, 12, 4001)[:, None].repeat(len(levels), 1)
  codes = np.asarray(vq.fsq_quantize(jnp.asarray(z, jnp.float32), levels))
  for i, num in enumerate(levels):
    values = np.unique(codes[:, i] * (num // 2))
    np.testing.assert_array_equal(values,
                                  np.arange(-(num // 2), (num - 1) // 2 + 1))


def test_gradient_is_that_of_the_bound_over_half_width():
  levels = [8, 5, 4]
  rng = np.random.default_rng(0)
  z = rng.normal(size=(10, 3))
  grad = jax.grad(lambda z: jnp.sum(vq.fsq_quantize(z, levels)))(
      jnp.asarray(z, jnp.float32))
  _, half_l, shift = _bound_np(z, levels)
  expected = half_l * (1 - np.tanh(z + shift) ** 2) / (np.asarray(levels) // 2)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("levels", LEVELS)
def test_index_round_trip_covers_every_code_once(levels):
  size = int(np.prod(levels))
  assert vq.fsq_codebook_size(levels) == size
  indices = np.arange(size, dtype=np.int32)
  codes = np.asarray(vq.fsq_indices_to_codes(jnp.asarray(indices), levels))
  assert codes.dtype == np.float32 and codes.shape == (size, len(levels))
  assert len({tuple(c) for c in codes}) == size
  assert codes.min() == -1.0 and codes.max() <= 1.0
  np.testing.assert_array_equal(vq.fsq_codes_to_indices(codes, levels), indices)
  np.testing.assert_array_equal(vq.fsq_codebook(levels), codes)
  # Mixed radix: digit i = (code_i + 1) * (L_i // 2), basis cumprod([1] + L[:-1]).
  half = np.asarray(levels) // 2
  digits = np.round(codes * half + half).astype(np.int64)
  basis = np.cumprod([1] + list(levels[:-1]))
  np.testing.assert_array_equal(digits @ basis, indices)
  # Every grid point fsq_quantize can produce is one of these codes.
  z = np.random.default_rng(0).normal(scale=3, size=(500, len(levels)))
  produced = np.asarray(vq.fsq_quantize(jnp.asarray(z, jnp.float32), levels))
  np.testing.assert_array_equal(
      codes[np.asarray(vq.fsq_codes_to_indices(produced, levels))], produced)


@pytest.mark.parametrize("levels", LEVELS)
def test_indices_stay_in_range_for_extreme_inputs(levels):
  d, size = len(levels), int(np.prod(levels))
  big = np.finfo(np.float32).max
  rng = np.random.default_rng(3)
  z = np.concatenate([
      np.full((1, d), big), np.full((1, d), -big), np.full((1, d), 1e30),
      rng.choice([-big, big, -1e20, 1e20, 0.0], size=(64, d)),
      rng.normal(scale=1e6, size=(64, d))]).astype(np.float32)
  for dtype in (jnp.float32, jnp.bfloat16):
    codes = vq.fsq_quantize(jnp.asarray(z, dtype), levels)
    assert codes.dtype == jnp.float32
    indices = np.asarray(vq.fsq_codes_to_indices(codes, levels))
    assert indices.dtype == np.int32
    assert indices.min() >= 0 and indices.max() < size
    np.testing.assert_array_equal(vq.fsq_indices_to_codes(indices, levels),
                                  codes)
  # Saturated channels sit on the grid's ends.
  top = np.asarray(vq.fsq_quantize(jnp.full((1, d), big), levels))[0]
  np.testing.assert_allclose(top * (np.asarray(levels) // 2),
                             (np.asarray(levels) - 1) // 2, rtol=1e-6)
  # Arbitrary codes (not on the grid, NaN) still give indices in range.
  junk = jnp.asarray([[np.nan] * d, [5.0] * d, [-7.0] * d])
  indices = np.asarray(vq.fsq_codes_to_indices(junk, levels))
  assert indices.min() >= 0 and indices.max() < size


def test_checks_name_the_argument():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="len\\(levels\\)"):
    vq.fsq_quantize(z, [8, 5, 5, 5])
  with pytest.raises(ValueError, match="levels"):
    vq.fsq_quantize(z, [8, 1, 5])
  with pytest.raises(ValueError, match="eps"):
    vq.fsq_bound(z, [8, 5, 5], eps=0.2)  # would round past the grid
  with pytest.raises(ValueError, match="indices"):
    vq.fsq_indices_to_codes(jnp.zeros((3,)), [8, 5, 5])


def test_jittable():
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4), jnp.bfloat16)
  fn = jax.jit(lambda z: vq.fsq_codes_to_indices(
      vq.fsq_quantize(z, (8, 5, 5, 5)), (8, 5, 5, 5)))
  assert fn(z).shape == (2, 3) and fn(z).dtype == jnp.int32
