"""Residual and grouped VQ against NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizer as vq


def _nearest_np(x, table):
  return ((x[..., None, :] - table) ** 2).sum(-1).argmin(-1)


def _residual_np(z, books, beta, active):
  residual, total, idx, cb, cm = z.copy(), np.zeros_like(z), [], [], []
  for n, table in enumerate(books):
    if n >= active:
      idx.append(np.full(z.shape[:-1], -1))
      cb.append(0.0)
      cm.append(0.0)
      continue
    i = _nearest_np(residual, table)
    q = table[i]
    idx.append(i)
    cb.append(((residual - q) ** 2).mean())
    cm.append(beta * ((residual - q) ** 2).mean())
    total += q
    residual = residual - q
  return np.stack(idx, -1), total, np.array(cb), np.array(cm)


@pytest.fixture
def data():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 4, 4)).astype(np.float32)
  books = rng.normal(size=(3, 6, 4)).astype(np.float32)
  books[1:] *= 0.5  # later depths refine
  return z, books


def test_residual_matches_numpy_loop(data):
  z, books = data
  out = vq.residual_quantize(jnp.asarray(z), jnp.asarray(books), beta=0.3)
  idx, total, cb, cm = _residual_np(z, books, 0.3, active=3)
  np.testing.assert_array_equal(out.indices, idx)
  np.testing.assert_allclose(out.quantized, total, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.codebook_loss, cb, rtol=1e-5)
  np.testing.assert_allclose(out.commitment_loss, cm, rtol=1e-5)
  np.testing.assert_allclose(out.loss, (cb + cm).sum(), rtol=1e-5)
  np.testing.assert_allclose(vq.residual_lookup(out.indices, books), total,
                             rtol=1e-5, atol=1e-6)
  for n in range(3):
    np.testing.assert_array_equal(
        out.counts[n], np.bincount(idx[..., n].ravel(), minlength=6))
  np.testing.assert_allclose(out.residuals[0], z)
  np.testing.assert_allclose(out.residuals[2],
                             z - books[0][idx[..., 0]] - books[1][idx[..., 1]],
                             rtol=1e-5, atol=1e-6)
  # Each depth lowers the reconstruction error on average here.
  errors = [((z - vq.residual_lookup(
      jnp.asarray(np.where(np.arange(3) < n, idx, -1)), books)) ** 2).mean()
            for n in (1, 2, 3)]
  assert errors[0] > errors[1] > errors[2]


def test_residual_gradients(data):
  z, books = data
  weights = jnp.asarray(np.random.default_rng(1).normal(size=z.shape),
                        jnp.float32)
  beta = 0.3

  def total(z, books):
    out = vq.residual_quantize(z, books, beta)
    return jnp.sum(weights * out.quantized) + out.loss

  grad_z, grad_books = jax.grad(total, argnums=(0, 1))(jnp.asarray(z),
                                                      jnp.asarray(books))
  idx, _, _, _ = _residual_np(z, books, beta, 3)
  # Encoder: decoder gradient once (straight-through on the sum), plus each
  # depth's commitment term on r_n = z - sg(q_0 + ... + q_{n-1}).
  expected = np.asarray(weights).copy()
  residual = z.copy()
  for n in range(3):
    q = books[n][idx[..., n]]
    expected += beta * 2 * (residual - q) / z.size
    residual = residual - q
  np.testing.assert_allclose(grad_z, expected, rtol=1e-5, atol=1e-6)
  # Codebook n: only its codebook term, 2 (q - sg r_n) / size, scattered.
  residual = z.copy()
  for n in range(3):
    q = books[n][idx[..., n]]
    want = np.zeros_like(books[n])
    np.add.at(want, idx[..., n].ravel(),
              (2 * (q - residual) / z.size).reshape(-1, 4))
    np.testing.assert_allclose(grad_books[n], want, rtol=1e-5, atol=1e-6)
    residual = residual - q


def test_quantizer_dropout(data):
  z, books = data
  out = vq.residual_quantize(jnp.asarray(z), jnp.asarray(books), num_active=2)
  idx, total, cb, cm = _residual_np(z, books, 0.25, active=2)
  np.testing.assert_array_equal(out.indices, idx)
  assert np.all(np.asarray(out.indices)[..., 2] == -1)
  np.testing.assert_allclose(out.quantized, total, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.codebook_loss, cb, rtol=1e-5)
  np.testing.assert_array_equal(out.counts[2], 0)
  np.testing.assert_array_equal(out.active, [True, True, False])
  np.testing.assert_allclose(vq.residual_lookup(out.indices, books), total,
                             rtol=1e-5, atol=1e-6)
  drawn = set()
  fn = jax.jit(lambda key: vq.residual_quantize(z, books, dropout_key=key))
  for seed in range(12):
    out = fn(jax.random.PRNGKey(seed))
    active = int(np.sum(out.active))
    drawn.add(active)
    np.testing.assert_array_equal(out.indices,
                                  _residual_np(z, books, 0.25, active)[0])
  assert drawn == {1, 2, 3}
  with pytest.raises(ValueError, match="num_active"):
    vq.residual_quantize(z, books, num_active=4)


def test_shared_codebook_by_broadcast(data):
  z, books = data
  shared = jnp.broadcast_to(jnp.asarray(books[0]), (3, 6, 4))
  out = vq.residual_quantize(jnp.asarray(z), shared)
  idx, total, _, _ = _residual_np(z, np.broadcast_to(books[0], (3, 6, 4)),
                                  0.25, 3)
  np.testing.assert_array_equal(out.indices, idx)
  grad = jax.grad(lambda b: vq.residual_quantize(
      z, jnp.broadcast_to(b, (3, 6, 4))).loss)(jnp.asarray(books[0]))
  assert grad.shape == (6, 4) and np.abs(grad).sum() > 0


def test_grouped_matches_numpy(data):
  z, _ = data
  rng = np.random.default_rng(2)
  books = rng.normal(size=(2, 5, 2)).astype(np.float32)
  out = vq.grouped_quantize(jnp.asarray(z), jnp.asarray(books), beta=0.4)
  parts = z.reshape(3, 4, 2, 2)
  idx = np.stack([_nearest_np(parts[..., g, :], books[g]) for g in range(2)],
                 -1)
  q = np.concatenate([books[g][idx[..., g]] for g in range(2)], -1)
  np.testing.assert_array_equal(out.indices, idx)
  np.testing.assert_allclose(out.quantized, q, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(vq.grouped_lookup(out.indices, books), q)
  per_group = ((parts - q.reshape(parts.shape)) ** 2).mean((0, 1, 3))
  np.testing.assert_allclose(out.codebook_loss, per_group, rtol=1e-5)
  np.testing.assert_allclose(out.commitment_loss, 0.4 * per_group, rtol=1e-5)
  # The mean over groups is plain VQ's loss on the concatenated vector.
  np.testing.assert_allclose(out.loss, 1.4 * ((z - q) ** 2).mean(), rtol=1e-5)
  for g in range(2):
    np.testing.assert_array_equal(out.counts[g],
                                  np.bincount(idx[..., g].ravel(), minlength=5))
  grad = jax.grad(lambda z: jnp.sum(vq.grouped_quantize(z, books).quantized))(
      jnp.asarray(z))
  np.testing.assert_allclose(grad, 1.0)  # straight-through


def test_ema_states_train_only_the_encoder(data):
  z, books = data
  states = jax.vmap(vq.ema_init)(jnp.asarray(books))
  out = vq.residual_quantize(jnp.asarray(z), states)
  np.testing.assert_allclose(out.loss, out.commitment_loss.sum())
  ema = vq.ema_codebook(decay=0.9)
  new, info = jax.vmap(ema.update, in_axes=(0, 0, -1))(
      states, out.residuals, out.indices)
  for n in range(3):
    single, _ = ema.update(vq.EMAState(*(x[n] for x in states)),
                           out.residuals[n], out.indices[..., n])
    np.testing.assert_allclose(new.codebook[n], single.codebook, rtol=1e-6)
  assert info.counts.shape == (3, 6)
  grouped = vq.grouped_quantize(jnp.asarray(z),
                                jax.vmap(vq.ema_init)(jnp.asarray(books[:2, :, :2])))
  np.testing.assert_allclose(grouped.loss, grouped.commitment_loss.mean())


def test_float32_for_bfloat16_and_checks(data):
  z, books = data
  zb = jnp.asarray(z, jnp.bfloat16)
  for out in (vq.residual_quantize(zb, jnp.asarray(books, jnp.bfloat16)),
              vq.grouped_quantize(zb, jnp.asarray(books[:2, :, :2]))):
    for name in ("quantized", "codebook_loss", "commitment_loss", "loss",
                 "counts"):
      assert out[name].dtype == jnp.float32, name
  with pytest.raises(ValueError, match="codebooks must be \\[N, K, D\\]"):
    vq.residual_quantize(z, books[0])
  with pytest.raises(ValueError, match="D = z.shape"):
    vq.residual_quantize(z, books[..., :3])
  with pytest.raises(ValueError, match="G \\* D/G"):
    vq.grouped_quantize(z, books[:3, :, :2])
  with pytest.raises(ValueError, match="indices must be \\[..., N\\]"):
    vq.residual_lookup(jnp.zeros((2, 2), jnp.int32), books)
