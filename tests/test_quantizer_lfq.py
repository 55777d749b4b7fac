"""LFQ: sign codes, index maps and the entropy terms against NumPy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizer as vq


def test_sign_quantisation_with_straight_through():
  z = jnp.asarray([[0.3, -2.0, 0.0, 1e-8]], jnp.bfloat16)
  codes = vq.lfq_quantize(z)
  assert codes.dtype == jnp.float32
  np.testing.assert_array_equal(codes, [[1, -1, -1, 1]])
  weights = jnp.arange(4.0)
  grad = jax.grad(lambda z: jnp.sum(weights * vq.lfq_quantize(z)))(
      jnp.asarray(z, jnp.float32))
  np.testing.assert_array_equal(grad, [weights])


@pytest.mark.parametrize("dim", [1, 3, 10])
def test_index_round_trip_covers_every_code_and_bit_i_is_channel_i(dim):
  indices = np.arange(2 ** dim, dtype=np.int32)
  codes = np.asarray(vq.lfq_indices_to_codes(jnp.asarray(indices), dim))
  assert codes.shape == (2 ** dim, dim) and codes.dtype == np.float32
  assert len({tuple(c) for c in codes}) == 2 ** dim
  np.testing.assert_array_equal(vq.lfq_codes_to_indices(codes), indices)
  np.testing.assert_array_equal(vq.lfq_codebook(dim), codes)
  for i in range(dim):
    np.testing.assert_array_equal(codes[:, i] > 0, (indices >> i) & 1)
  one_hot = -np.ones((dim, dim), np.float32) + 2 * np.eye(dim, dtype=np.float32)
  np.testing.assert_array_equal(vq.lfq_codes_to_indices(one_hot),
                                2 ** np.arange(dim))


def _entropies_np(z, temperature):
  """Direct computation over all 2^d codes, float64."""
  z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
  codes = np.array(list(itertools.product([-1.0, 1.0], repeat=z.shape[-1])))
  logits = -((z[:, None, :] - codes[None]) ** 2).sum(-1) / temperature
  logits -= logits.max(-1, keepdims=True)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  xlogx = lambda p: np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)
  per_sample = -xlogx(probs).sum(-1).mean()
  avg = probs.mean(0)
  marginal = (probs[:, :, None] * (codes[None] > 0)).sum(1).mean(0)  # P(+1)
  factorized_batch = -(xlogx(marginal) + xlogx(1 - marginal)).sum()
  return per_sample, -xlogx(avg).sum(), factorized_batch


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_entropy_terms_match_a_direct_computation(temperature):
  rng = np.random.default_rng(0)
  z = rng.normal(size=(4, 6, 5)).astype(np.float32)
  sample, batch, factorized_batch = _entropies_np(z, temperature)
  out = vq.lfq_entropy_loss(jnp.asarray(z), temperature)
  np.testing.assert_allclose(out.sample_entropy, sample, rtol=1e-5)
  np.testing.assert_allclose(out.codebook_entropy, batch, rtol=1e-5)
  np.testing.assert_allclose(out.loss, sample - batch, rtol=1e-4, atol=1e-5)
  fact = vq.lfq_entropy_loss(jnp.asarray(z), temperature, factorized=True,
                             diversity_weight=0.5)
  # The per-vector softmax factorises exactly over channels ...
  np.testing.assert_allclose(fact.sample_entropy, sample, rtol=1e-5)
  # ... the batch term is the product of averaged marginals: an upper bound.
  np.testing.assert_allclose(fact.codebook_entropy, factorized_batch,
                             rtol=1e-5)
  assert float(fact.codebook_entropy) >= float(out.codebook_entropy) - 1e-5
  np.testing.assert_allclose(fact.loss, sample - 0.5 * factorized_batch,
                             rtol=1e-4, atol=1e-5)


def test_entropy_is_float32_finite_and_differentiable_for_bfloat16():
  z = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 6), jnp.bfloat16) * 30
  for factorized in (False, True):
    def loss(z):
      out = vq.lfq_entropy_loss(z, 0.01, factorized=factorized)
      return out.loss, out
    grad, out = jax.jit(jax.grad(loss, has_aux=True))(z)
    assert all(v.dtype == jnp.float32 for v in out)
    assert grad.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_entropy_checks():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="temperature"):
    vq.lfq_entropy_loss(z, 0.0)
  with pytest.raises(ValueError, match="indices"):
    vq.lfq_indices_to_codes(jnp.zeros(3), 3)
  with pytest.raises(ValueError, match="d must be"):
    vq.lfq_codebook(31)
