"""A small image classifier whose features score generated images.

The MNIST-scale analogue of the Inception network behind FID and the
Inception score: three 3x3 convolutions (the last two stride 2), a dense
feature layer and the class logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax


class Classifier(nn.Module):
  """`[B, H, W, C]` float images in [-0.5, 0.5] -> class logits `[B, K]`.

  `features(x)` gives the penultimate activations `[B, feature_dim]`.
  """
  num_classes: int
  width: int = 32
  feature_dim: int = 128

  def features(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    x = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=(2, 2))(x))
    x = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=(2, 2))(x))
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.feature_dim)(x))

  @nn.compact
  def __call__(self, x: jax.Array, return_features: bool = False):
    features = self.features(x)
    logits = nn.Dense(self.num_classes)(features)
    return (logits, features) if return_features else logits
