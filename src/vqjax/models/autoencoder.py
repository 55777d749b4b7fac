"""The VQ-VAE's baselines, on its encoder and decoder: an autoencoder and a
Gaussian VAE (Kingma & Welling 2014) with a latent grid of the same size and
width as the VQ-VAE's codes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.models.vqvae import Decoder, Encoder, ModuleDef

SAMPLE_RNG = "latent"  # The VAE's rng stream for z ~ q(z | x).


class Autoencoder(nn.Module):
  """Encoder -> 1x1 conv to D -> Decoder, with a continuous bottleneck.

  With `variational=False` a plain autoencoder: `z = encode(x)`. With
  `variational=True` a Gaussian VAE: the 1x1 conv gives the mean and log
  variance of a diagonal Gaussian `q(z | x)`, `z` is drawn by
  reparameterisation (rng stream `latent`; the mean when `sample=False`),
  the prior is N(0, I) and `kl` is KL(q(z | x) || p(z)) in closed form.
  `conv` and `conv_transpose` as `VQVAE`'s.
  """
  num_hiddens: int = 128
  num_residual_hiddens: int = 32
  num_residual_layers: int = 2
  num_downsamples: int = 2
  code_dim: int = 64
  variational: bool = False
  out_channels: int = 1
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  conv_transpose: ModuleDef = nn.ConvTranspose

  levels = ()  # No codes.

  def setup(self):
    self.encoder = Encoder(self.num_hiddens, self.num_residual_hiddens,
                           self.num_residual_layers, self.num_downsamples,
                           self.dtype, self.conv)
    width = 2 * self.code_dim if self.variational else self.code_dim
    self.pre_bottleneck = self.conv(width, (1, 1), dtype=self.dtype)
    self.decoder = Decoder(self.num_hiddens, self.num_residual_hiddens,
                           self.num_residual_layers, self.out_channels,
                           self.num_downsamples, self.dtype, self.conv,
                           self.conv_transpose)

  def posterior(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`[B, H, W, C]` -> (mean, log variance), each `[B, h, w, D]` float32
    (log variance 0 for the plain autoencoder)."""
    h = self.pre_bottleneck(self.encoder(x)).astype(jnp.float32)
    if not self.variational:
      return h, jnp.zeros_like(h)
    mean, log_variance = jnp.split(h, 2, axis=-1)
    return mean, log_variance

  def decode(self, z: jax.Array) -> jax.Array:
    """`[B, h, w, D]` -> images `[B, H, W, C]` float32."""
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x: jax.Array, train: bool = False,
               sample: bool = True) -> dict[str, jax.Array]:
    """`x: [B, H, W, C]` -> dict with `reconstruction`, `z` `[B, h, w, D]`,
    `loss` (0: the task adds the reconstruction term), `kl` `[B]` nats
    (zeros for the autoencoder) and `levels = {}`."""
    del train  # Same computation in training and evaluation.
    mean, log_variance = self.posterior(x)
    z, kl = mean, jnp.zeros(x.shape[:1], jnp.float32)
    if self.variational:
      if sample:
        noise = jax.random.normal(self.make_rng(SAMPLE_RNG), mean.shape)
        z = mean + jnp.exp(0.5 * log_variance) * noise
      kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(log_variance) - 1.0
                         - log_variance, axis=(1, 2, 3))
    return {"reconstruction": self.decode(z), "z": z, "kl": kl,
            "loss": jnp.zeros((), jnp.float32), "levels": {}}
