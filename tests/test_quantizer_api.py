"""An API that cannot be misused silently: settings with the state, K read
from the codebook, trace-time checks naming the argument, one return type and
one dtype rule; and the cosine codebook."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from vqjax import quantizer as vq


@pytest.fixture
def z_and_codebook():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32),
          jnp.asarray(rng.normal(size=(16, 4)), jnp.float32))


def test_quantize_returns_a_keyed_named_tuple(z_and_codebook):
  z, codebook = z_and_codebook
  out = jax.jit(vq.quantize)(z, codebook)
  assert isinstance(out, vq.QuantizeOutput)
  assert out.keys() == ("quantized", "indices", "codebook_loss",
                        "commitment_loss", "loss", "counts")
  for key in out.keys():
    assert out[key] is getattr(out, key)
  assert "loss" in out and "nope" not in out
  assert dict(out)["indices"] is out.indices and out.get("nope") is None
  quantized, indices, *_ = out
  assert indices is out[1]
  with pytest.raises(KeyError, match="nope"):
    out["nope"]  # pylint: disable=pointless-statement
  np.testing.assert_allclose(out.loss, out.codebook_loss + out.commitment_loss)
  np.testing.assert_array_equal(out.counts,
                                np.bincount(np.ravel(indices), minlength=16))
  assert quantized.shape == z.shape


def test_one_dtype_rule_float32_for_bfloat16_inputs(z_and_codebook):
  z, codebook = z_and_codebook
  zb, cb = z.astype(jnp.bfloat16), codebook.astype(jnp.bfloat16)
  outputs = [vq.quantize(zb, cb), vq.quantize(zb, cb, gradient="rotation"),
             vq.quantize(zb, cb, cosine=True), vq.quantize(zb, vq.ema_init(cb))]
  for out in outputs:
    for key in ("quantized", "codebook_loss", "commitment_loss", "loss",
                "counts"):
      assert out[key].dtype == jnp.float32, key
    assert out.indices.dtype == jnp.int32
  stats = vq.usage_stats(outputs[0].indices, codebook=cb)
  assert all(v.dtype == jnp.float32 for v in stats)
  assert vq.perplexity(jnp.ones(4, jnp.bfloat16)).dtype == jnp.float32
  # Losses of a bfloat16 input equal those of its float32 value.
  np.testing.assert_allclose(outputs[0].loss,
                             vq.quantize(zb.astype(jnp.float32),
                                         cb.astype(jnp.float32)).loss,
                             rtol=1e-6)
  grad = jax.grad(lambda z: vq.quantize(z, cb).loss)(zb)
  assert grad.dtype == jnp.bfloat16


def test_ema_codebook_state_loss_is_commitment_only(z_and_codebook):
  z, codebook = z_and_codebook
  out = vq.quantize(z, vq.ema_init(codebook))
  np.testing.assert_allclose(out.loss, out.commitment_loss)
  assert float(out.codebook_loss) > 0


def test_usage_reads_k_from_the_codebook():
  # The case: 18 indices into a 16-code codebook; num_codes=8 used to
  # drop the indices >= 8 silently.
  indices = jnp.asarray(np.arange(18) % 16, jnp.int32)
  codebook = jnp.zeros((16, 2))
  stats = vq.usage_stats(indices, codebook=codebook)
  assert float(stats.counts.sum()) == 18 and float(stats.out_of_range) == 0
  assert stats["codes_used"] == 1.0
  assert vq.usage_stats(indices, codebook=vq.ema_init(codebook)).counts.shape \
      == (16,)
  with pytest.raises(ValueError, match="num_codes=8 disagrees.*K = 16"):
    vq.usage_stats(indices, 8, codebook=codebook)
  with pytest.raises(ValueError, match="num_codes=8 disagrees"):
    vq.code_counts(indices, 8, codebook=codebook)
  with pytest.raises(ValueError, match="codebook=.*num_codes"):
    vq.usage_stats(indices)
  # The old signature still works, and now says what it dropped.
  old = vq.usage_stats(indices, 8)
  kept = np.bincount(np.arange(18) % 16)[:8]
  assert float(old.counts.sum()) == kept.sum() == 10
  assert float(old.out_of_range) == 8
  p = kept / kept.sum()
  np.testing.assert_allclose(old["perplexity"], np.exp(-(p * np.log(p)).sum()),
                             rtol=1e-6)
  np.testing.assert_array_equal(vq.code_counts(indices, codebook=codebook),
                                vq.code_counts(indices, 16))


def test_trace_time_checks_name_the_argument(z_and_codebook):
  z, codebook = z_and_codebook
  idx = vq.nearest_code(z, codebook)
  state = vq.ema_init(codebook)
  cases = [
      (lambda: vq.quantize(z, codebook[:, :3]), "codebook must be \\[K, D\\] "
       "with D = z_e.shape\\[-1\\] = 4"),
      (lambda: vq.nearest_code(z, codebook[None]), "codebook must be \\[K, D\\]"),
      (lambda: vq.quantize(z, codebook, beta=-0.1), "beta"),
      (lambda: vq.commitment_loss(z, z, beta=-1.0), "beta"),
      (lambda: vq.lookup(idx.astype(jnp.float32), codebook), "indices must be "
       "an integer"),
      (lambda: vq.ema_update(state, z, idx.astype(jnp.float32)), "indices"),
      (lambda: vq.ema_update(state, z, idx[0]), "indices must have shape "
       "z.shape\\[:-1\\]"),
      (lambda: vq.ema_update(state, z, idx, decay=1.0), "decay"),
      (lambda: vq.ema_update(state, z, idx, decay=-0.5), "decay"),
      (lambda: vq.ema_update(state, z, idx, epsilon=0.0), "epsilon"),
      (lambda: vq.ema_update(state, z[..., :3], idx), "state.codebook"),
      (lambda: vq.restart_dead_codes(state, z, jax.random.PRNGKey(0),
                                     decay=1.5), "decay"),
      (lambda: vq.ema_codebook(decay=1.0), "decay"),
      (lambda: vq.ema_codebook(dead_code_threshold=-1.0),
       "dead_code_threshold"),
      (lambda: vq.kmeans(z, 0, jax.random.PRNGKey(0)), "num_codes"),
      (lambda: vq.quantize(jnp.zeros((2, 4), jnp.int32), codebook),
       "z_e must be a floating"),
  ]
  for fn, message in cases:
    with pytest.raises(ValueError, match=message):
      fn()
  # The same checks fire when traced under jit (shapes are static).
  with pytest.raises(ValueError, match="indices must have shape"):
    jax.jit(vq.ema_update)(state, z, idx[0])
  with pytest.raises(ValueError, match="codebook must be"):
    jax.jit(vq.quantize)(z, codebook[:, :3])
  # A traced decay cannot be checked at trace time and is accepted.
  jax.jit(vq.ema_update)(state, z, idx, 0.9)


def test_ema_codebook_keeps_its_decay_for_restarts():
  # The case: ema_update(decay=0.9) then restart_dead_codes at its
  # default 0.99 judged usage with the wrong debiasing.
  rng = np.random.default_rng(4)
  codebook = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
  ema = vq.ema_codebook(decay=0.9, epsilon=1e-5, dead_code_threshold=1.0)
  assert (ema.decay, ema.epsilon, ema.dead_code_threshold) == (0.9, 1e-5, 1.0)
  state, manual = ema.init(codebook), vq.ema_init(codebook)
  key = jax.random.PRNGKey(0)
  update = jax.jit(ema.update)
  for step in range(4):
    z = jnp.asarray(rng.normal(size=(24, 3)), jnp.float32)
    indices = jnp.asarray(rng.integers(0, 4 + 4 * step, size=24), jnp.int32)
    key, sub = jax.random.split(key)
    state, info = update(state, z, indices, sub)
    manual = vq.ema_update(manual, z, indices, decay=0.9, epsilon=1e-5)
    manual, dead = vq.restart_dead_codes(manual, z, sub, 1.0, decay=0.9)
    for a, b in zip(state, manual):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(info.restarted, dead)
    np.testing.assert_allclose(info.cluster_size,
                               vq.ema_cluster_size(state, 0.9), rtol=1e-6)
    np.testing.assert_array_equal(
        info.counts, np.bincount(np.asarray(indices), minlength=16))
  assert float(info.num_restarted) == float(np.sum(dead)) > 0
  np.testing.assert_allclose(ema.cluster_size(state),
                             vq.ema_cluster_size(state, 0.9))
  with pytest.raises(ValueError, match="needs key="):
    ema.update(state, z, indices)
  # Without restarts no key is needed and nothing is restarted.
  plain = vq.ema_codebook(decay=0.9)
  new, info = plain.update(plain.init(codebook), z, indices)
  assert not np.any(info.restarted)
  np.testing.assert_allclose(
      new.codebook, vq.ema_update(vq.ema_init(codebook), z, indices, 0.9).codebook)


def test_cosine_lookup_and_normalisation():
  rng = np.random.default_rng(5)
  z = rng.normal(size=(10, 4)).astype(np.float32)
  codebook = (rng.normal(size=(6, 4)) * rng.uniform(0.1, 5, (6, 1))).astype(
      np.float32)
  cos = (z @ codebook.T) / np.linalg.norm(z, axis=1)[:, None] \
      / np.linalg.norm(codebook, axis=1)
  np.testing.assert_array_equal(vq.cosine_nearest_code(z, codebook),
                                cos.argmax(1))
  unit = np.asarray(vq.l2_normalize(jnp.asarray(z)))
  np.testing.assert_allclose(unit, z / np.linalg.norm(z, axis=1, keepdims=True),
                             rtol=1e-6)
  zero = jnp.zeros((2, 4))
  np.testing.assert_array_equal(vq.l2_normalize(zero), 0.0)
  assert np.all(np.isfinite(jax.grad(lambda x: jnp.sum(vq.l2_normalize(x)))(
      zero)))
  out = vq.quantize(jnp.asarray(z), jnp.asarray(codebook), cosine=True)
  np.testing.assert_array_equal(out.indices, cos.argmax(1))
  np.testing.assert_allclose(np.linalg.norm(out.quantized, axis=-1), 1.0,
                             rtol=1e-6)
  unit_codes = codebook / np.linalg.norm(codebook, axis=1, keepdims=True)
  np.testing.assert_allclose(
      out.codebook_loss, ((unit - unit_codes[cos.argmax(1)]) ** 2).mean(),
      rtol=1e-5)


def test_cosine_ema_stays_on_the_sphere():
  rng = np.random.default_rng(6)
  codebook = jnp.asarray(rng.normal(size=(8, 3)) * 3, jnp.float32)
  ema = vq.ema_codebook(decay=0.8, dead_code_threshold=0.5, cosine=True)
  state = ema.init(codebook)
  np.testing.assert_allclose(np.linalg.norm(state.codebook, axis=1), 1.0,
                             rtol=1e-6)
  for t in range(1, 4):
    z = jnp.asarray(rng.normal(size=(20, 3)) * 4, jnp.float32)
    indices = vq.cosine_nearest_code(z, state.codebook)
    before = state
    state, info = ema.update(state, z, indices, jax.random.PRNGKey(t))
    np.testing.assert_allclose(np.linalg.norm(state.codebook, axis=1), 1.0,
                               rtol=1e-5)
    # The EMA averages the normalised inputs; each code (not restarted) is
    # the normalised EMA mean, i.e. the direction of its EMA sum (debiasing
    # and smoothing scale each code by a positive number).
    unit = np.asarray(z) / np.linalg.norm(z, axis=1, keepdims=True)
    sums = np.zeros((8, 3))
    np.add.at(sums, np.asarray(indices), unit)
    kept = ~np.asarray(info.restarted)
    np.testing.assert_allclose(
        np.asarray(state.embed_sum)[kept],
        (0.8 * np.asarray(before.embed_sum) + 0.2 * sums)[kept],
        rtol=1e-5, atol=1e-6)
    embed = np.asarray(state.embed_sum)
    has_mass = kept & (np.abs(embed).sum(1) > 0)
    np.testing.assert_allclose(
        np.asarray(state.codebook)[has_mass],
        (embed / np.linalg.norm(embed, axis=1, keepdims=True))[has_mass],
        rtol=1e-5, atol=1e-6)
    never = kept & (np.abs(embed).sum(1) == 0)
    np.testing.assert_array_equal(np.asarray(state.codebook)[never],
                                  np.asarray(before.codebook)[never])
  centres = vq.kmeans(jnp.asarray(rng.normal(size=(30, 3)), jnp.float32), 4,
                      jax.random.PRNGKey(0), cosine=True)
  np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, rtol=1e-5)


def test_importing_the_quantizer_needs_jax_and_numpy_only():
  heavy = ("flax", "optax", "orbax", "grain", "tensorflow",
           "tensorflow_datasets", "ml_collections", "absl", "PIL", "tqdm",
           "tensorboardX", "vqjax.models", "vqjax.train")
  code = ("import sys, vqjax.quantizer as q; q.quantize; "
          f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}"
          f" or m.startswith(('vqjax.models', 'vqjax.train'))))")
  result = run_python(["-c", code])
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]", result.stdout


def test_the_search_can_be_replaced(z_and_codebook):
  # A backend passes its own formulation of nearest_code (vqjax.xla_cpu).
  z, codebook = z_and_codebook
  first = lambda z, c: jnp.zeros(z.shape[:-1], jnp.int32)
  out = vq.quantize(z, codebook, search=first)
  np.testing.assert_array_equal(out.indices, 0)
  np.testing.assert_allclose(out.quantized, jnp.broadcast_to(codebook[0],
                                                             z.shape),
                             atol=1e-6)
  books = jnp.stack([codebook, codebook])
  assert np.all(np.asarray(vq.residual_quantize(z, books, search=first)
                           .indices) == 0)
  assert np.all(np.asarray(vq.grouped_quantize(z, books[:, :, :2],
                                               search=first).indices) == 0)
