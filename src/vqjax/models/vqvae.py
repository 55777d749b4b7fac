"""The VQ-VAE of van den Oord et al. (2017), in the shape of Sonnet's example.

Written with Flax's own layers. Each module takes the layers it computes with
as fields (`conv: ModuleDef = nn.Conv`, as Flax's ImageNet example does), so
`vqjax.models.build` can hand it a backend's formulations of the same layers
(`vqjax.xla_cpu`) on the same parameters.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax import quantizer as vq
from vqjax.models.quantizers import (code_channels, codebook_size,
                                     quantizer_for)

ModuleDef = Any
LEVEL = "codes"  # The one code grid of a VQ-VAE (a VQ-VAE-2 has two).


class ResidualStack(nn.Module):
  """`x + conv1x1(relu(conv3x3(relu(x))))`, repeated, then a final ReLU:
  `[B, H, W, C] -> [B, H, W, C]`."""
  num_hiddens: int
  num_residual_hiddens: int
  num_residual_layers: int
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for _ in range(self.num_residual_layers):
      h = nn.relu(x)
      h = nn.relu(self.conv(self.num_residual_hiddens, (3, 3),
                            dtype=self.dtype)(h))
      x = x + self.conv(self.num_hiddens, (1, 1), dtype=self.dtype)(h)
    return nn.relu(x)


class Encoder(nn.Module):
  """`[B, H, W, C]` -> `[B, H / 2^n, W / 2^n, num_hiddens]`.

  `n = num_downsamples` 4x4 stride-2 convs (ReLU), a 3x3 conv, a residual stack.
  """
  num_hiddens: int
  num_residual_hiddens: int
  num_residual_layers: int
  num_downsamples: int = 2
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_downsamples):
      last = i == self.num_downsamples - 1
      features = self.num_hiddens if last else self.num_hiddens // 2
      x = nn.relu(self.conv(features, (4, 4), strides=(2, 2),
                            dtype=self.dtype)(x))
    x = self.conv(self.num_hiddens, (3, 3), dtype=self.dtype)(x)
    return ResidualStack(self.num_hiddens, self.num_residual_hiddens,
                         self.num_residual_layers, self.dtype, self.conv)(x)


class Decoder(nn.Module):
  """`[B, h, w, D]` -> `[B, h 2^n, w 2^n, out_channels]`, mirroring the encoder:
  a 3x3 conv, a residual stack, `n` 4x4 stride-2 transposed convs."""
  num_hiddens: int
  num_residual_hiddens: int
  num_residual_layers: int
  out_channels: int
  num_downsamples: int = 2
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  conv_transpose: ModuleDef = nn.ConvTranspose

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.conv(self.num_hiddens, (3, 3), dtype=self.dtype)(z)
    x = ResidualStack(self.num_hiddens, self.num_residual_hiddens,
                      self.num_residual_layers, self.dtype, self.conv)(x)
    for i in range(self.num_downsamples):
      last = i == self.num_downsamples - 1
      features = self.out_channels if last else self.num_hiddens // 2
      x = self.conv_transpose(features, (4, 4), strides=(2, 2),
                              dtype=self.dtype)(x)
      if not last:
        x = nn.relu(x)
    return x


class VQVAE(nn.Module):
  """Encoder -> 1x1 conv to D -> VectorQuantizer -> Decoder.

  Images enter as floats in [-0.5, 0.5] (`vqjax.models.to_float`); the
  reconstruction is on the same scale. `dtype` is the encoder's and decoder's
  computation dtype (e.g. bfloat16); parameters, the quantizer (distances,
  losses, EMA statistics), `z_e` and the reconstruction are float32.

  Code grids are `[B, h, w, C]` int32, the layout the PixelCNN prior and
  the sampler use too: C = 1 code of K = `codebook_size` values per position,
  or C = `depth` residual / `groups` grouped codes, in order.

  The quantizer (`vqjax.models.quantizers.quantizer_for`): `kind` 'vq' is a
  `VectorQuantizer` (fields `num_codes` ... `dead_code_threshold`,
  `gradient`, `cosine`, `lookup_dim`, `depth`, `groups`, `shared_codebook`,
  `dropout`), 'fsq' an `FSQuantizer` (`fsq_levels`), 'lfq' an `LFQuantizer`
  (`num_codes` = 2^d, `beta`, `entropy_weight`, `entropy_temperature`).

  `conv`, `conv_transpose` and `nearest_code` are what it computes with:
  Flax's layers and `vqjax.quantizer.nearest_code` unless a builder injects
  others (`vqjax.models.build`).
  """
  num_hiddens: int = 128
  num_residual_hiddens: int = 32
  num_residual_layers: int = 2
  num_downsamples: int = 2
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

  levels = (LEVEL,)

  def setup(self):
    self.encoder = Encoder(self.num_hiddens, self.num_residual_hiddens,
                           self.num_residual_layers, self.num_downsamples,
                           self.dtype, self.conv)
    self.pre_quantization = self.conv(self.code_dim, (1, 1), dtype=self.dtype)
    self.quantizer = quantizer_for(self)
    self.decoder = Decoder(self.num_hiddens, self.num_residual_hiddens,
                           self.num_residual_layers, self.out_channels,
                           self.num_downsamples, self.dtype, self.conv,
                           self.conv_transpose)

  def encode(self, x: jax.Array) -> jax.Array:
    """`[B, H, W, C]` float -> `z_e: [B, h, w, D]` float32."""
    return self.pre_quantization(self.encoder(x)).astype(jnp.float32)

  def decode(self, z_q: jax.Array) -> jax.Array:
    """`[B, h, w, D]` -> reconstruction `[B, H, W, C]` float32."""
    return self.decoder(z_q).astype(jnp.float32)

  @property
  def codebook_size(self) -> int:
    """K, the values of each code channel."""
    return codebook_size(self.kind, self.num_codes, self.fsq_levels)

  @property
  def code_channels(self) -> int:
    """C, the code channels per position."""
    return code_channels(self.kind, self.depth, self.groups)

  def codebook(self) -> jax.Array:
    """The stored codebook (`[K, D]` for the default quantizer; see
    `VectorQuantizer.codebook`); FSQ and LFQ have none (`code_tables`)."""
    return self.quantizer.codebook()

  def code_tables(self) -> jax.Array:
    """`[C, K, d]`: the codes of each channel in the quantizer's lookup
    space (FSQ's and LFQ's implicit codebooks)."""
    return self.quantizer.code_tables()

  def encode_to_indices(self, x: jax.Array) -> jax.Array:
    """`[B, H, W, C]` float -> codes `[B, h, w, C_codes]` int32."""
    z_e = self.encode(x)
    return self.quantizer(z_e)["indices"].reshape(z_e.shape[:-1] + (-1,))

  def decode_indices(self, codes: jax.Array) -> jax.Array:
    """Codes `[B, h, w, C_codes]` int -> images `[B, H, W, C]` float32."""
    check_code_grid(codes, "codes", self.code_channels)
    return self.decode(self.quantizer.lookup_codes(codes))

  def set_codebook(self, codebook: jax.Array) -> None:
    self.quantizer.set_codebook(codebook)

  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """`x: [B, H, W, C]` float -> dict with `reconstruction` [B, H, W, C],
    `z_e` [B, h, w, D], the quantizer's outputs (see `VectorQuantizer`) and
    `levels = {"codes": <those>}` (the shape a VQ-VAE-2's levels take)."""
    z_e = self.encode(x)
    level = dict(self.quantizer(z_e, train=train), z_e=z_e)
    return dict(level, reconstruction=self.decode(level["quantized"]),
                levels={LEVEL: level})


def check_code_grid(codes: jax.Array, name: str, channels: int = 1) -> None:
  """Raises unless `codes` is an integer code grid `[B, h, w, channels]`."""
  shape = jnp.shape(codes)
  if len(shape) != 4 or shape[-1] != channels or not jnp.issubdtype(
      jnp.result_type(codes), jnp.integer):
    hint = ("; add the channel axis with codes[..., None]" if channels == 1
            else "")
    raise ValueError(
        f"{name} must be an integer code grid [B, h, w, {channels}] "
        f"({channels} code channel{'s' if channels > 1 else ''} per "
        f"position), got {jnp.result_type(codes)} of shape {shape}{hint}.")


def to_float(images: jax.Array) -> jax.Array:
  """uint8 `[..]` in [0, 255] -> float32 in [-0.5, 0.5] (Sonnet's scaling)."""
  return images.astype(jnp.float32) / 255.0 - 0.5


def to_uint8(images: jax.Array) -> jax.Array:
  """Inverse of `to_float`, clipped."""
  return jnp.clip(jnp.round((images + 0.5) * 255.0), 0, 255).astype(jnp.uint8)
