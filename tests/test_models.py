"""The VQ-VAE module: shapes, gradient paths and the EMA collection."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax.models.vector_quantizer import EMA_COLLECTION, VectorQuantizer
from vqjax.models.vqvae import VQVAE

SMALL = dict(num_hiddens=16, num_residual_hiddens=8, num_residual_layers=1,
             num_codes=8, code_dim=4)


@pytest.mark.parametrize("num_downsamples", [1, 2, 3])
def test_vqvae_shapes(num_downsamples):
  model = VQVAE(**SMALL, num_downsamples=num_downsamples, out_channels=3)
  x = jnp.zeros((2, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x)
  h = 16 // 2 ** num_downsamples
  assert out["reconstruction"].shape == x.shape
  assert out["indices"].shape == (2, h, h)
  assert out["z_e"].shape == (2, h, h, 4)
  codes = model.apply(variables, x, method=VQVAE.encode_to_indices)
  assert codes.shape == (2, h, h, 1)
  decoded = model.apply(variables, codes, method=VQVAE.decode_indices)
  np.testing.assert_allclose(decoded, out["reconstruction"], atol=1e-5)
  with pytest.raises(ValueError, match=r"code grid \[B, h, w, 1\]"):
    model.apply(variables, codes[..., 0], method=VQVAE.decode_indices)


def test_decoder_gradient_reaches_encoder_params():
  model = VQVAE(**SMALL, use_ema=False)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 1)) - 0.5
  params = model.init(jax.random.PRNGKey(0), x)["params"]

  def recon_only(params):
    return jnp.mean(model.apply({"params": params}, x)["reconstruction"] ** 2)

  grads = jax.grad(recon_only)(params)
  assert float(jnp.abs(grads["encoder"]["Conv_0"]["kernel"]).sum()) > 0
  # Reconstruction alone never reaches the codebook (straight-through).
  assert float(jnp.abs(grads["quantizer"]["codebook"]).sum()) == 0


def test_ema_quantizer_updates_only_when_training_and_mutable():
  q = VectorQuantizer(num_codes=8, code_dim=4, use_ema=True)
  z = jax.random.normal(jax.random.PRNGKey(0), (32, 4))
  variables = q.init(jax.random.PRNGKey(1), z)
  assert "params" not in variables
  before = variables[EMA_COLLECTION]["codebook"]
  q.apply(variables, z, train=False)
  _, updated = q.apply(variables, z, train=True, mutable=[EMA_COLLECTION])
  assert int(updated[EMA_COLLECTION]["count"]) == 1
  assert not np.allclose(updated[EMA_COLLECTION]["codebook"], before)


def test_ema_quantizer_restart_needs_and_uses_rng():
  q = VectorQuantizer(num_codes=64, code_dim=4, dead_code_threshold=1.0)
  z = jax.random.normal(jax.random.PRNGKey(0), (16, 4))
  variables = q.init(jax.random.PRNGKey(1), z)
  out, updated = q.apply(variables, z, train=True, mutable=[EMA_COLLECTION],
                         rngs={"restart": jax.random.PRNGKey(2)})
  assert float(out["restarted"]) >= 64 - 16  # at most 16 codes were used


def test_training_without_the_ema_collection_mutable_is_an_error():
  """`train=True` on the EMA codebook without `vq_ema` mutable would skip the
  codebook update silently: it raises, naming what to pass."""
  model = VQVAE(**SMALL)
  x = jnp.zeros((2, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match=r"mutable=\['vq_ema'\]"):
    model.apply(variables, x, train=True)
  model.apply(variables, x, train=True, mutable=[EMA_COLLECTION])
  model.apply(variables, x)  # Evaluation needs nothing mutable.
