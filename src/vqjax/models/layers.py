"""Layers shared by the vqjax models."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


class UpsampleConvTranspose(nn.Module):
  """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")`, fast.

  XLA:CPU runs the strided transposed convolution as a convolution over an
  input dilated with zeros, three quarters of which are multiplications by
  zero, and slowly at that. Here the same function is computed by phase
  (sub-pixel) decomposition: output pixel `(2a + p, 2b + q)` only ever meets
  kernel taps `k[p::2, q::2]`, so all four phases come out of one dense 2x2
  convolution with `4 * features` outputs, interleaved by a reshape
  (depth-to-space). Parameters have the same names and shapes as
  `nn.ConvTranspose` (`kernel: [4, 4, C_in, C_out]`, `bias: [C_out]`), so the two
  are interchangeable (`tests/test_layers.py` checks equality).

  Input `[B, H, W, C_in]` -> output `[B, 2H, 2W, features]`.
  """
  features: int
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, in_features = x.shape
    kernel = self.param("kernel", self.kernel_init,
                        (4, 4, in_features, self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    # [2, 2, C_in, 4 * C_out]: phase (p, q) is the 2x2 sub-kernel k[p::2, q::2].
    phases = jnp.stack([kernel[p::2, q::2] for p in (0, 1) for q in (0, 1)],
                       axis=-2)
    phases = phases.reshape(2, 2, in_features, 4 * self.features)
    y = lax.conv_general_dilated(
        x, phases, window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [B, H+1, W+1, 4*C_out]
    y = y.reshape(batch, height + 1, width + 1, 2, 2, self.features)
    # Phase p of output row 2a + p reads window row a + p.
    rows = [jnp.stack([y[:, p:p + height, q:q + width, p, q]
                       for q in (0, 1)], axis=3) for p in (0, 1)]
    y = jnp.stack(rows, axis=2)  # [B, H, 2, W, 2, C_out]
    y = y.reshape(batch, 2 * height, 2 * width, self.features)
    return y + bias


class ResidualStack(nn.Module):
  """Sonnet's VQ-VAE residual stack: `x + conv1x1(relu(conv3x3(relu(x))))`
  repeated, then a final ReLU. `[B, H, W, C] -> [B, H, W, C]`."""
  num_hiddens: int
  num_residual_hiddens: int
  num_residual_layers: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for _ in range(self.num_residual_layers):
      h = nn.relu(x)
      h = nn.Conv(self.num_residual_hiddens, (3, 3), padding="SAME")(h)
      h = nn.relu(h)
      h = nn.Conv(self.num_hiddens, (1, 1))(h)
      x = x + h
    return nn.relu(x)


def conv_stride2(features: int, name: str | None = None) -> nn.Conv:
  """The encoder's 4x4 stride-2 downsampling convolution."""
  return nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME", name=name)


__all__: Sequence[str] = ["UpsampleConvTranspose", "ResidualStack",
                          "conv_stride2"]
