"""The stage-2 model: a Gated PixelCNN over a grid of codes (or pixels),
optionally conditioned on class labels and on a VQ-VAE-2's top codes.

Its parameters are `{"pixelcnn": ..., "conditioner": ...}` (the conditioner
only for a bottom-level prior). Trainers, `vqjax.runs` and `vqjax.sampling`
call it through `apply`; none of them builds or unpacks that tree.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.models.conditioning import TopCodeConditioner
from vqjax.models.pixelcnn import GatedPixelCNN, valid_conv

Array = jax.Array
ModuleDef = Any


class CodePrior(nn.Module):
  """p(x | labels, top codes) for a grid `x: [B, h, w, C]` of values in
  `[0, V)`: codes of a VQ-VAE (C = 1), or pixels (V = 256).

  Attributes:
    num_values: V, values per channel (K codes, or 256 for pixels).
    num_channels: C, ordered channels per position.
    features, num_layers, kernel_size, head_features, attention_every,
      attention_heads, dropout: the `GatedPixelCNN`'s.
    num_classes: if > 0, class-conditional on `labels [B]`.
    top_num_codes: if > 0, a VQ-VAE-2's bottom prior, conditioned on the
      whole grid of top codes `[B, h_t, w_t, 1]` (K of the top codebook).
    top_upsamples: m, the top grid is 2^m times coarser than `x`'s.
    cond_features: F_c, the width of the top codes' conditioning map.
    dtype: computation dtype; logits are float32.
    conv, conv_transpose: the conditioner's layers (Flax's by default).
    valid_conv: the PixelCNN's VALID convolution (`pixelcnn.valid_conv` by
      default).

  The sampler (`vqjax.sampling`) needs only the attributes above and the
  methods `condition`, `logits`, `embed`, `vertical_row`,
  `horizontal_pixel` and `attention_kv`.
  """
  num_values: int
  num_channels: int = 1
  features: int = 128
  num_layers: int = 12
  kernel_size: int = 5
  head_features: int = 256
  num_classes: int = 0
  attention_every: int = 0
  attention_heads: int = 4
  dropout: float = 0.0
  top_num_codes: int = 0
  top_upsamples: int = 1
  cond_features: int = 0
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  conv_transpose: ModuleDef = nn.ConvTranspose
  valid_conv: Callable[[Array, Array], Array] = valid_conv

  def setup(self):
    if bool(self.top_num_codes) != (self.cond_features > 0):
      raise ValueError(
          f"top_num_codes={self.top_num_codes} and cond_features="
          f"{self.cond_features}: a prior conditioned on top codes needs both "
          "> 0, one without needs both 0.")
    self.pixelcnn = GatedPixelCNN(
        num_values=self.num_values, num_channels=self.num_channels,
        features=self.features, num_layers=self.num_layers,
        kernel_size=self.kernel_size, head_features=self.head_features,
        num_classes=self.num_classes, cond_features=self.cond_features,
        attention_every=self.attention_every,
        attention_heads=self.attention_heads, dropout=self.dropout,
        dtype=self.dtype, valid_conv=self.valid_conv)
    if self.top_num_codes:
      self.conditioner = TopCodeConditioner(
          self.top_num_codes, self.cond_features, self.top_upsamples,
          dtype=self.dtype, conv=self.conv,
          conv_transpose=self.conv_transpose)

  def condition(self, top_codes: Array | None) -> Array | None:
    """Top codes `[B, h_t, w_t, 1]` -> the conditioning map
    `[B, h, w, F_c]` float32 (None for a prior without top codes)."""
    if not self.top_num_codes:
      if top_codes is not None:
        raise ValueError("top_codes given, but this prior is not conditioned "
                         "on top codes (top_num_codes == 0).")
      return None
    if top_codes is None:
      raise ValueError("This is a VQ-VAE-2 bottom prior: pass top_codes "
                       "[B, h_t, w_t, 1].")
    return self.conditioner(jnp.asarray(top_codes, jnp.int32))

  def __call__(self, x: Array, labels: Array | None = None,
               top_codes: Array | None = None, train: bool = False,
               example_ids: Array | None = None) -> Array:
    """Logits `[B, h, w, C, V]` float32 of `x: [B, h, w, C]` int; those at
    (i, j, c) depend only on earlier positions and channels < c. `train`
    applies dropout (a "dropout" rng is then needed if `dropout > 0`), with
    masks picked by `example_ids [B]` (see `GatedPixelCNN`)."""
    return self.logits(x, labels, self.condition(top_codes), train,
                       example_ids)

  def logits(self, x: Array, labels: Array | None = None,
             cond: Array | None = None, train: bool = False,
             example_ids: Array | None = None) -> Array:
    """`__call__` given the conditioning map `cond = condition(top_codes)`."""
    return self.pixelcnn(x, labels, cond, train, example_ids)

  def logits_from_onehot(self, onehot: Array, labels: Array | None = None,
                         top_codes: Array | None = None) -> Array:
    """`__call__` on a (relaxed) one-hot `[B, h, w, C, V]` input."""
    return self.pixelcnn.logits_from_onehot(onehot, labels,
                                            self.condition(top_codes))

  def embed(self, x: Array) -> Array:
    """See `GatedPixelCNN.embed`."""
    return self.pixelcnn.embed(x)

  def vertical_row(self, caches, labels=None, cond_row=None):
    """See `GatedPixelCNN.vertical_row`."""
    return self.pixelcnn.vertical_row(caches, labels, cond_row)

  def horizontal_pixel(self, buffers, emb_pixel, v_pre, labels=None,
                       cond_pixel=None, kv_caches=None, position=None,
                       grid=None):
    """See `GatedPixelCNN.horizontal_pixel`."""
    return self.pixelcnn.horizontal_pixel(buffers, emb_pixel, v_pre, labels,
                                          cond_pixel, kv_caches, position,
                                          grid)

  def attention_kv(self, block_inputs, emb_pixel, position, grid):
    """See `GatedPixelCNN.attention_kv`."""
    return self.pixelcnn.attention_kv(block_inputs, emb_pixel, position, grid)
