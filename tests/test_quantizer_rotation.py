"""The rotation trick against the closed form of Fifty et al. 2024 (NumPy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizer as vq


def _closed_form(e, q, g):
  """`lambda R^T g` per row, R = I - 2 r r^T + 2 q^ e^^T (paper, eq. 4-5)."""
  e, q, g = (np.asarray(x, np.float64) for x in (e, q, g))
  out = np.zeros_like(g)
  for n, (en, qn, gn) in enumerate(zip(e, q, g)):
    e_hat, q_hat = en / np.linalg.norm(en), qn / np.linalg.norm(qn)
    r = e_hat + q_hat
    r = r / np.linalg.norm(r) if np.linalg.norm(r) > 0 else r
    rot = np.eye(len(en)) - 2 * np.outer(r, r) + 2 * np.outer(q_hat, e_hat)
    scale = np.linalg.norm(qn) / np.linalg.norm(en)
    # The reference itself: R is orthogonal, takes e^ to q^, lambda R e = q.
    np.testing.assert_allclose(rot @ rot.T, np.eye(len(en)), atol=1e-10)
    np.testing.assert_allclose(rot @ e_hat, q_hat, atol=1e-10)
    np.testing.assert_allclose(scale * rot @ en, qn, atol=1e-10)
    out[n] = scale * rot.T @ gn
  return out


def _vjp(e, q, g):
  out, pullback = jax.vjp(vq.rotation_trick, jnp.asarray(e, jnp.float32),
                          jnp.asarray(q, jnp.float32))
  grad_e, grad_q = pullback(jnp.asarray(g, jnp.float32))
  return out, np.asarray(grad_e), np.asarray(grad_q)


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_gradient_is_the_papers_rotation_and_rescale(dim):
  rng = np.random.default_rng(dim)
  e = rng.normal(size=(6, dim))
  q = rng.normal(size=(6, dim)) * rng.uniform(0.2, 3.0, size=(6, 1))
  g = rng.normal(size=(6, dim))
  out, grad_e, grad_q = _vjp(e, q, g)
  np.testing.assert_array_equal(out, q.astype(np.float32))  # exactly z_q
  np.testing.assert_allclose(grad_e, _closed_form(e, q, g), rtol=2e-5,
                             atol=2e-6)
  np.testing.assert_array_equal(grad_q, 0.0)  # the codes learn elsewhere


def test_gradient_norm_scales_by_norm_ratio_and_keeps_angle():
  # |grad| = lambda |g| (R orthogonal), and the angle between the gradient
  # and e equals the angle between g and q (R maps e^ to q^).
  rng = np.random.default_rng(0)
  e, q, g = rng.normal(size=(3, 1, 4))
  q = 2.5 * q
  _, grad_e, _ = _vjp(e, q, g)
  scale = np.linalg.norm(q) / np.linalg.norm(e)
  np.testing.assert_allclose(np.linalg.norm(grad_e), scale * np.linalg.norm(g),
                             rtol=1e-5)
  cos = lambda a, b: a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b)
  np.testing.assert_allclose(cos(grad_e, e), cos(g, q), rtol=1e-5, atol=1e-6)


def test_same_direction_is_pure_rescale():
  e = np.array([[1.0, 2.0, -1.0]])
  q = 3.0 * e
  g = np.array([[0.5, -1.0, 2.0]])
  _, grad_e, _ = _vjp(e, q, g)
  np.testing.assert_allclose(grad_e, 3.0 * g, rtol=1e-5)


def test_opposite_directions_reflect():
  e = np.array([[1.0, 2.0, -1.0]])
  q = -0.5 * e
  g = np.array([[0.5, -1.0, 2.0]])
  _, grad_e, _ = _vjp(e, q, g)
  e_hat = e[0] / np.linalg.norm(e)
  rot = np.eye(3) - 2 * np.outer(e_hat, e_hat)  # r = 0: R = I + 2 q^ e^^T
  np.testing.assert_allclose(grad_e[0], 0.5 * rot.T @ g[0], rtol=1e-5,
                             atol=1e-6)


def test_zero_vectors_fall_back_to_straight_through():
  e = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
  q = np.array([[1.0, -1.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  g = np.arange(9.0).reshape(3, 3) - 4.0
  out, grad_e, _ = _vjp(e, q, g)
  np.testing.assert_array_equal(out, q.astype(np.float32))
  np.testing.assert_allclose(grad_e, g)
  assert np.all(np.isfinite(grad_e))


def test_float32_whatever_the_input_dtype_and_jittable():
  rng = np.random.default_rng(1)
  e = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.bfloat16)
  q = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.bfloat16)
  out = jax.jit(vq.rotation_trick)(e, q)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, np.asarray(q, np.float32))
  grad = jax.grad(lambda e: jnp.sum(vq.rotation_trick(e, q) ** 2))(e)
  assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(
      grad, np.float32)))


def test_quantize_with_rotation_gradient():
  rng = np.random.default_rng(2)
  z = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  codebook = jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  beta = 0.5

  def total(z):
    out = vq.quantize(z, codebook, beta, gradient="rotation")
    return jnp.sum(weights * out.quantized) + out.loss

  grad = jax.grad(total)(z)
  z_q = np.asarray(codebook)[np.asarray(vq.nearest_code(z, codebook))]
  expected = (_closed_form(np.asarray(z, np.float64), z_q,
                           np.asarray(weights, np.float64))
              + beta * 2.0 * (np.asarray(z) - z_q) / z.size)
  np.testing.assert_allclose(grad, expected, rtol=2e-5, atol=2e-6)
  out = vq.quantize(z, codebook, beta, gradient="rotation")
  np.testing.assert_array_equal(out.quantized, z_q)
  with pytest.raises(ValueError, match="gradient"):
    vq.quantize(z, codebook, gradient="rotate")
