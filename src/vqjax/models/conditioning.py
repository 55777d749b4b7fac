"""The bottom prior's view of the top codes (VQ-VAE-2).

The bottom codes' PixelCNN is conditioned on the whole grid of top codes
(known before any bottom code is drawn), through the Gated PixelCNN's spatial
conditioning path (`GatedPixelCNN.cond_features`): the top codes are
embedded, mixed by a 3x3 convolution and upsampled to the bottom grid by
4x4 stride-2 transposed convolutions, one per factor of two.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any


class TopCodeConditioner(nn.Module):
  """Top codes `[B, h, w, C]` int -> a map `[B, h 2^m, w 2^m, features]`.

  Each of the C code channels (residual depths or groups; usually 1) has its
  own embedding rows; a position's embedding is their sum.

  Attributes:
    num_codes: K of the top codebook (values per code channel).
    features: F_c, the conditioning map's width (the PixelCNN's
      `cond_features`).
    upsamples: m, the top grid's downsampling relative to the bottom grid.
  """
  num_codes: int
  features: int
  upsamples: int
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  conv_transpose: ModuleDef = nn.ConvTranspose

  @nn.compact
  def __call__(self, top_codes: jax.Array) -> jax.Array:
    """`top_codes: [B, h, w, C]` int -> `[B, h 2^m, w 2^m, features]`
    float32."""
    channels = top_codes.shape[-1]
    rows = top_codes + self.num_codes * jnp.arange(channels)
    x = jnp.sum(nn.Embed(self.num_codes * channels, self.features,
                         dtype=self.dtype)(rows), axis=-2)
    x = nn.relu(self.conv(self.features, (3, 3), dtype=self.dtype)(x))
    for i in range(self.upsamples):
      x = self.conv_transpose(self.features, (4, 4), strides=(2, 2),
                              dtype=self.dtype)(x)
      if i < self.upsamples - 1:
        x = nn.relu(x)
    return x.astype(jnp.float32)
