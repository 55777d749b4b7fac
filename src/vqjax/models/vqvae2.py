"""VQ-VAE-2 (Razavi et al. 2019, "Generating Diverse High-Fidelity Images
with VQ-VAE-2"), two levels, on the VQ-VAE's encoder and decoder blocks.

  x -> bottom encoder -> b            [B, H / 2^n, W / 2^n, F]   (n = num_downsamples)
  b -> top encoder -> 1x1 -> VQ_top   [B, h_b / 2^m, w_b / 2^m, D] (m = top_downsamples)
  z_q_top -> top decoder -> t         [B, h_b, w_b, D]
  [b, t] -> 1x1 -> VQ_bottom          [B, h_b, w_b, D]
  [upsample(z_q_top), z_q_bottom] -> decoder -> reconstruction

The top codes carry the global shape; the bottom codes, quantised after
seeing the decoded top codes, add the detail. Each level has its own
codebook (its own `VectorQuantizer`, EMA and dead-code restarts included).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax import quantizer as vq
from vqjax.models.quantizers import (code_channels, codebook_size,
                                     quantizer_for)
from vqjax.models.vqvae import Decoder, Encoder, ModuleDef, check_code_grid

LEVELS = ("top", "bottom")


class VQVAE2(nn.Module):
  """Two-level VQ-VAE. Fields as `VQVAE`'s, plus `top_downsamples` (m >= 1).

  Images enter as floats in [-0.5, 0.5]; the quantizers, `z_e` of each level
  and the reconstruction are float32. Code grids are `[B, h, w, C]` int32 per
  level (C = `code_channels`). Both levels' quantizers are made from the same
  quantizer fields (`kind`, ..., as `VQVAE`'s), each with its own codebook.
  `conv`, `conv_transpose` and `nearest_code` as `VQVAE`'s.
  """
  num_hiddens: int = 128
  num_residual_hiddens: int = 32
  num_residual_layers: int = 2
  num_downsamples: int = 1
  top_downsamples: int = 1
  num_codes: int = 512
  code_dim: int = 64
  beta: float = 0.25
  use_ema: bool = True
  decay: float = 0.99
  epsilon: float = 1e-5
  dead_code_threshold: float = 0.0
  out_channels: int = 1
  dtype: Any = jnp.float32
  axis_name: str | None = None
  conv: ModuleDef = nn.Conv
  conv_transpose: ModuleDef = nn.ConvTranspose
  nearest_code: Callable[[jax.Array, jax.Array], jax.Array] = vq.nearest_code
  kind: str = "vq"
  gradient: str = "straight_through"
  cosine: bool = False
  lookup_dim: int = 0
  fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
  depth: int = 1
  groups: int = 1
  shared_codebook: bool = False
  dropout: float = 0.0
  entropy_weight: float = 0.1
  entropy_temperature: float = 0.01

  levels = LEVELS

  def setup(self):
    blocks = (self.num_hiddens, self.num_residual_hiddens,
              self.num_residual_layers)
    layers = {"conv": self.conv, "dtype": self.dtype}
    self.bottom_encoder = Encoder(*blocks, self.num_downsamples, **layers)
    self.top_encoder = Encoder(*blocks, self.top_downsamples, **layers)
    self.top_pre_quantization = self.conv(self.code_dim, (1, 1),
                                          dtype=self.dtype)
    self.top_quantizer = quantizer_for(self)
    self.top_decoder = Decoder(*blocks, self.code_dim, self.top_downsamples,
                               conv_transpose=self.conv_transpose, **layers)
    self.bottom_pre_quantization = self.conv(self.code_dim, (1, 1),
                                             dtype=self.dtype)
    self.bottom_quantizer = quantizer_for(self)
    self.upsample_top = [
        self.conv_transpose(self.code_dim, (4, 4), strides=(2, 2),
                            dtype=self.dtype)
        for _ in range(self.top_downsamples)]
    self.decoder = Decoder(*blocks, self.out_channels, self.num_downsamples,
                           conv_transpose=self.conv_transpose, **layers)

  @property
  def codebook_size(self) -> int:
    """K, the values of each code channel (both levels)."""
    return codebook_size(self.kind, self.num_codes, self.fsq_levels)

  @property
  def code_channels(self) -> int:
    """C, the code channels per position (both levels)."""
    return code_channels(self.kind, self.depth, self.groups)

  def codebook(self, level: str) -> jax.Array:
    """The stored codebook of `level` ('top' or 'bottom'): `[K, D]` for the
    default quantizer."""
    return self._quantizer(level).codebook()

  def code_tables(self, level: str) -> jax.Array:
    """`[C, K, d]` of `level` (see `VQVAE.code_tables`)."""
    return self._quantizer(level).code_tables()

  def _quantizer(self, level: str) -> nn.Module:
    return {"top": self.top_quantizer, "bottom": self.bottom_quantizer}[level]

  def _bottom_z_e(self, features: jax.Array, top_q: jax.Array) -> jax.Array:
    decoded = self.top_decoder(top_q)
    joined = jnp.concatenate([features, decoded.astype(features.dtype)], -1)
    return self.bottom_pre_quantization(joined).astype(jnp.float32)

  def decode(self, top_q: jax.Array, bottom_q: jax.Array) -> jax.Array:
    """`[B, h_t, w_t, D]`, `[B, h_b, w_b, D]` -> images `[B, H, W, C]`."""
    up = top_q.astype(self.dtype)
    for i, layer in enumerate(self.upsample_top):
      up = layer(up)
      if i < len(self.upsample_top) - 1:
        up = nn.relu(up)
    joined = jnp.concatenate([up, bottom_q.astype(self.dtype)], axis=-1)
    return self.decoder(joined).astype(jnp.float32)

  def encode(self, x: jax.Array, train: bool = False) -> dict[str, dict]:
    """`[B, H, W, C]` -> per level, its quantizer's outputs and `z_e`."""
    features = self.bottom_encoder(x)
    top_z_e = self.top_pre_quantization(
        self.top_encoder(features)).astype(jnp.float32)
    top = dict(self.top_quantizer(top_z_e, train=train), z_e=top_z_e)
    bottom_z_e = self._bottom_z_e(features, top["quantized"])
    bottom = dict(self.bottom_quantizer(bottom_z_e, train=train),
                  z_e=bottom_z_e)
    return {"top": top, "bottom": bottom}

  def encode_to_indices(self, x: jax.Array) -> dict[str, jax.Array]:
    """`[B, H, W, C]` -> `{"top": [B, h_t, w_t, C_codes], "bottom": [B, h_b,
    w_b, C_codes]}` int32."""
    return {name: level["indices"].reshape(level["z_e"].shape[:-1] + (-1,))
            for name, level in self.encode(x).items()}

  def decode_indices(self, top: jax.Array, bottom: jax.Array) -> jax.Array:
    """Code grids of both levels, `[B, h, w, C_codes]` each -> images
    `[B, H, W, C]` float32."""
    check_code_grid(top, "top", self.code_channels)
    check_code_grid(bottom, "bottom", self.code_channels)
    return self.decode(self.top_quantizer.lookup_codes(top),
                       self.bottom_quantizer.lookup_codes(bottom))

  def set_codebook(self, codebooks: dict[str, jax.Array]) -> None:
    for name, codebook in codebooks.items():
      self._quantizer(name).set_codebook(codebook)

  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
    """`x: [B, H, W, C]` -> dict with `reconstruction` `[B, H, W, C]`, `loss`
    (both quantizers' trained terms) and `levels`: per level, its
    quantizer's outputs (see `VectorQuantizer`) and `z_e`."""
    levels = self.encode(x, train)
    top, bottom = levels["top"], levels["bottom"]
    return {"reconstruction": self.decode(top["quantized"], bottom["quantized"]),
            "loss": top["loss"] + bottom["loss"], "levels": levels}
