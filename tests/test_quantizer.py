"""The functional quantizer against NumPy references and gradient identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizer as vq

K, D = 16, 4


@pytest.fixture
def z_and_codebook():
  kz, kc = jax.random.split(jax.random.PRNGKey(0))
  return (jax.random.normal(kz, (3, 5, 5, D)),
          jax.random.normal(kc, (K, D)))


def test_squared_distances_and_nearest_match_brute_force(z_and_codebook):
  z, codebook = z_and_codebook
  zn, cn = np.asarray(z, np.float64), np.asarray(codebook, np.float64)
  brute = ((zn[..., None, :] - cn) ** 2).sum(-1)
  np.testing.assert_allclose(vq.squared_distances(z, codebook), brute,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(vq.nearest_code(z, codebook), brute.argmin(-1))
  np.testing.assert_array_equal(vq.lookup(vq.nearest_code(z, codebook), codebook),
                                cn[brute.argmin(-1)].astype(np.float32))


def test_loss_values_match_numpy(z_and_codebook):
  z, codebook = z_and_codebook
  out = vq.quantize(z, codebook, beta=0.25)
  zn, cn = np.asarray(z), np.asarray(codebook)
  zq = cn[((zn[..., None, :] - cn) ** 2).sum(-1).argmin(-1)]
  np.testing.assert_allclose(out["codebook_loss"], ((zn - zq) ** 2).mean(), rtol=1e-6)
  np.testing.assert_allclose(out["commitment_loss"], 0.25 * ((zn - zq) ** 2).mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(out["quantized"], zq, atol=1e-6)


def _decoder(x):
  """A stand-in decoder with a non-trivial gradient."""
  return jnp.sum(jnp.sin(x) * jnp.arange(x.size).reshape(x.shape) / x.size)


def test_straight_through_passes_decoder_grad_to_encoder(z_and_codebook):
  z, codebook = z_and_codebook
  z_q = vq.lookup(vq.nearest_code(z, codebook), codebook)
  grad_through = jax.grad(lambda z: _decoder(vq.straight_through(z, z_q)))(z)
  grad_at_codes = jax.grad(_decoder)(z_q)
  np.testing.assert_allclose(grad_through, grad_at_codes, rtol=1e-6)


def _total_loss(z, codebook, beta):
  out = vq.quantize(z, codebook, beta)
  return _decoder(out["quantized"]) + out["codebook_loss"] + out["commitment_loss"]


def test_codebook_gets_gradient_only_from_codebook_term(z_and_codebook):
  z, codebook = z_and_codebook
  total = jax.grad(_total_loss, argnums=1)(z, codebook, 0.25)
  codebook_only = jax.grad(
      lambda c: vq.quantize(z, c)["codebook_loss"])(codebook)
  np.testing.assert_allclose(total, codebook_only, rtol=1e-6, atol=1e-8)
  assert np.abs(total).sum() > 0


def test_encoder_gradient_is_reconstruction_plus_beta_commitment(z_and_codebook):
  z, codebook = z_and_codebook
  beta = 0.7
  total = jax.grad(_total_loss, argnums=0)(z, codebook, beta)
  z_q = vq.lookup(vq.nearest_code(z, codebook), codebook)
  expected = jax.grad(_decoder)(z_q) + beta * 2.0 * (z - z_q) / z.size
  np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-7)


def test_perplexity_and_fraction_used():
  assert float(vq.perplexity(jnp.ones(8))) == pytest.approx(8.0)
  assert float(vq.perplexity(jnp.array([5.0, 0, 0, 0]))) == pytest.approx(1.0)
  counts = vq.code_counts(jnp.array([[0, 1], [1, 3]]), 4)
  np.testing.assert_array_equal(counts, [1, 2, 0, 1])
  assert float(vq.fraction_used(counts)) == pytest.approx(0.75)
  p = np.array([1, 2, 0, 1]) / 4
  assert float(vq.perplexity(counts)) == pytest.approx(
      np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()), rel=1e-6)


def test_ema_update_equals_hand_computed_values():
  rng = np.random.default_rng(0)
  codebook = rng.normal(size=(4, 2)).astype(np.float32)
  state = vq.ema_init(codebook)
  decay, eps = 0.9, 1e-5
  hidden_n, hidden_s = np.zeros(4), np.zeros((4, 2))
  for t in range(1, 4):
    z = rng.normal(size=(10, 2)).astype(np.float32)
    idx = np.array([0, 0, 1, 1, 1, 0, 2, 0, 1, 0][:10]) if t < 3 else \
        np.asarray(vq.nearest_code(z, state.codebook))
    state = vq.ema_update(state, jnp.asarray(z), jnp.asarray(idx), decay, eps)
    n = np.bincount(idx, minlength=4)
    s = np.zeros((4, 2))
    np.add.at(s, idx, z)
    hidden_n = decay * hidden_n + (1 - decay) * n
    hidden_s = decay * hidden_s + (1 - decay) * s
    size = hidden_n / (1 - decay ** t)
    total = size.sum()
    smoothed = (size + eps) / (total + 4 * eps) * total
    expected = hidden_s / (1 - decay ** t) / smoothed[:, None]
    np.testing.assert_allclose(state.codebook, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.cluster_size, hidden_n, rtol=1e-5)
    np.testing.assert_allclose(vq.ema_cluster_size(state, decay), size, rtol=1e-5)
  assert int(state.count) == 3
  # Code 3 was never used: Laplace smoothing keeps it finite (zero sum -> 0).
  assert np.all(np.isfinite(state.codebook))


def test_dead_code_restart_replaces_exactly_the_dead_codes():
  rng = np.random.default_rng(1)
  state = vq.ema_init(rng.normal(size=(6, 3)).astype(np.float32))
  z = jnp.asarray(rng.normal(size=(20, 3)).astype(np.float32))
  idx = jnp.asarray([0] * 10 + [1] * 5 + [2] * 5)  # codes 3, 4, 5 unused
  state = vq.ema_update(state, z, idx, decay=0.99)
  new, dead = vq.restart_dead_codes(state, z, jax.random.PRNGKey(3),
                                    threshold=1.0, decay=0.99)
  np.testing.assert_array_equal(dead, [False, False, False, True, True, True])
  np.testing.assert_array_equal(new.codebook[:3], state.codebook[:3])
  zn = np.asarray(z)
  for k in (3, 4, 5):  # each restarted code is one of the batch's vectors
    assert np.min(np.abs(zn - np.asarray(new.codebook[k])).sum(-1)) < 1e-6
  np.testing.assert_allclose(vq.ema_cluster_size(new, 0.99)[3:], 1.0, rtol=1e-5)
  np.testing.assert_array_equal(new.cluster_size[:3], state.cluster_size[:3])
  # Deterministic in the key.
  again, _ = vq.restart_dead_codes(state, z, jax.random.PRNGKey(3), 1.0, 0.99)
  np.testing.assert_array_equal(again.codebook, new.codebook)


def test_no_restart_before_first_update():
  state = vq.ema_init(jnp.zeros((4, 2)))
  new, dead = vq.restart_dead_codes(state, jnp.ones((5, 2)), jax.random.PRNGKey(0))
  assert not np.any(dead)
  np.testing.assert_array_equal(new.codebook, state.codebook)


def test_kmeans_finds_well_separated_clusters():
  rng = np.random.default_rng(0)
  centres = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
  z = np.concatenate([c + 0.1 * rng.normal(size=(50, 2)) for c in centres])
  found = np.asarray(vq.kmeans(jnp.asarray(z, jnp.float32), 3,
                               jax.random.PRNGKey(0), num_iters=10))
  distance = np.abs(found[:, None] - centres[None]).sum(-1).min(0)
  assert np.all(distance < 0.2), found


def test_kmeans_starts_from_given_centres():
  z = jnp.asarray([[0.0], [1.0], [9.0], [10.0]])
  init = jnp.asarray([[0.5], [20.0]])
  np.testing.assert_array_equal(vq.kmeans(z, 2, None, 0, init=init), init)
  # One Lloyd step: every point is nearer the first centre; the second keeps
  # its place with no points.
  np.testing.assert_allclose(vq.kmeans(z, 2, None, 1, init=init),
                             [[5.0], [20.0]])
  with pytest.raises(ValueError, match=r"init must be \[num_codes, D\]"):
    vq.kmeans(z, 3, None, 1, init=init)


def test_functions_are_jittable(z_and_codebook):
  z, codebook = z_and_codebook
  out = jax.jit(vq.quantize)(z, codebook)
  np.testing.assert_array_equal(out["indices"], vq.nearest_code(z, codebook))
  state = jax.jit(vq.ema_update)(vq.ema_init(codebook), z, out["indices"])
  assert state.codebook.shape == (K, D)


def test_functional_api_imports_without_flax():
  from conftest import run_python
  result = run_python(["-c", "import sys, vqjax; vqjax.nearest_code; "
                       "print('flax' in sys.modules)"])
  assert result.stdout.strip() == "False", result.stderr


def test_code_sums_match_one_hot_formulation():
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
