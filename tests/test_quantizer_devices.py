"""Every statistic and update of the quantizer: 2 devices == 1 device on the
same global batch (forced CPU devices, one subprocess for all checks)."""

import textwrap

from conftest import run_python

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from vqjax import quantizer as vq

    assert jax.local_device_count() == 2, jax.devices()
    A = "batch"
    rng = np.random.default_rng(0)

    def pmap(f):
      return jax.pmap(f, axis_name=A)

    def same(one, two, name, rtol=1e-5, atol=1e-6):
      # `two` is stacked over devices: every device holds what one device
      # computed on the whole batch.
      flat_one = jax.tree_util.tree_leaves(one)
      flat_two = jax.tree_util.tree_leaves(two)
      assert len(flat_one) == len(flat_two), name
      for a, b in zip(flat_one, flat_two):
        for d in range(2):
          np.testing.assert_allclose(np.asarray(b[d], np.float64),
                                     np.asarray(a, np.float64), rtol=rtol,
                                     atol=atol, err_msg=name)

    def split(x):  # [N, ...] -> [2, N/2, ...]
      return x.reshape((2, -1) + x.shape[1:])

    codebook = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)

    # EMA update + dead-code restarts (plain and cosine), three steps.
    for cosine in (False, True):
      ema = vq.ema_codebook(decay=0.9, dead_code_threshold=4.0, cosine=cosine)
      update1 = jax.jit(ema.update)
      update2 = jax.pmap(lambda s, z, i, k: ema.update(s, z, i, k, A),
                         axis_name=A, in_axes=(None, 0, 0, None))
      one = ema.init(codebook)
      two = one
      restarted = 0.0
      for t in range(3):
        z = jnp.asarray(rng.normal(size=(12, 3, 4)), jnp.float32)
        idx = vq.nearest_code(z, one.codebook)
        key = jax.random.PRNGKey(t)
        one, info1 = update1(one, z, idx, key)
        out2 = update2(two, split(z), split(idx), key)
        same((one, info1), out2, f"ema cosine={cosine} step {t}")
        two = jax.tree.map(lambda x: x[0], out2[0])
        restarted += float(info1.num_restarted)
      assert restarted > 0, "no restarts exercised"
    # The older functions, reducing over the same axis.
    z = jnp.asarray(rng.normal(size=(12, 3, 4)), jnp.float32)
    idx = vq.nearest_code(z, one.codebook)
    def old(s, z, i, axis):
      s = vq.ema_update(s, z, i, 0.9, 1e-5, axis)
      return vq.restart_dead_codes(s, z, jax.random.PRNGKey(9), 4.0, 0.9, axis)
    same(jax.jit(lambda s, z, i: old(s, z, i, None))(one, z, idx),
         jax.pmap(lambda s, z, i: old(s, z, i, A), axis_name=A,
                  in_axes=(None, 0, 0))(one, split(z), split(idx)),
         "ema_update + restart_dead_codes")

    # k-means (plain and spherical).
    z = jnp.asarray(rng.normal(size=(16, 2, 4)), jnp.float32)
    for cosine in (False, True):
      key = jax.random.PRNGKey(3)
      same(jax.jit(lambda z: vq.kmeans(z, 5, key, 4, cosine=cosine))(z),
           pmap(lambda z: vq.kmeans(z, 5, key, 4, A, cosine=cosine))(split(z)),
           f"kmeans cosine={cosine}")

    # Usage statistics, counts in quantize.
    idx = vq.nearest_code(z, codebook)
    same(vq.usage_stats(idx, codebook=codebook),
         pmap(lambda i: vq.usage_stats(i, codebook=codebook, axis_name=A))(
             split(idx)), "usage_stats")
    same(vq.quantize(z, codebook).counts,
         pmap(lambda z: vq.quantize(z, codebook, axis_name=A).counts)(
             split(z)), "quantize counts")

    # LFQ entropy, exact and factorised.
    zl = jnp.asarray(rng.normal(size=(8, 3, 5)), jnp.float32)
    for factorized in (False, True):
      same(vq.lfq_entropy_loss(zl, 0.5, factorized=factorized),
           pmap(lambda z: vq.lfq_entropy_loss(z, 0.5, A,
                                              factorized=factorized))(
               split(zl)), f"lfq factorized={factorized}")

    # Residual VQ with quantizer dropout, and its per-depth EMA update.
    books = jnp.asarray(rng.normal(size=(3, 6, 4)), jnp.float32)
    key = jax.random.PRNGKey(7)
    ema = vq.ema_codebook(decay=0.9, dead_code_threshold=0.5)
    def residual(z, axis):
      out = vq.residual_quantize(z, books, dropout_key=key, axis_name=axis)
      states = jax.vmap(ema.init)(books)
      keys = jax.random.split(jax.random.PRNGKey(8), 3)
      new, info = jax.vmap(lambda s, r, i, k: ema.update(s, r, i, k, axis),
                           in_axes=(0, 0, -1, 0))(states, out.residuals,
                                                  out.indices, keys)
      losses = (out.codebook_loss, out.commitment_loss, out.loss)
      if axis is not None:  # each device's losses are means over its batch
        losses = jax.lax.pmean(losses, axis)
      return (out.counts, out.active, losses, new, info), (out.indices,
                                                           out.quantized)
    one, (indices, quantized) = jax.jit(lambda z: residual(z, None))(z)
    two, (indices2, quantized2) = pmap(lambda z: residual(z, A))(split(z))
    same(one, two, "residual_quantize")
    np.testing.assert_array_equal(np.asarray(indices2).reshape(indices.shape),
                                  indices)
    np.testing.assert_allclose(np.asarray(quantized2).reshape(quantized.shape),
                               quantized, rtol=1e-6, atol=1e-6)

    # Grouped VQ counts.
    groups = jnp.asarray(rng.normal(size=(2, 5, 2)), jnp.float32)
    same(vq.grouped_quantize(z, groups).counts,
         pmap(lambda z: vq.grouped_quantize(z, groups, axis_name=A).counts)(
             split(z)), "grouped counts")
    print("EQUAL")
""")


def test_two_devices_compute_what_one_device_computes():
  result = run_python(["-c", SCRIPT], env={
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
      "JAX_PLATFORMS": "cpu"})
  assert result.stdout.strip().endswith("EQUAL"), (result.stdout +
                                                   result.stderr[-4000:])
