"""The modules a config describes (`config.model`, `config.quantizer`)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from vqjax.configs import ConfigError
from vqjax.models.pixelcnn import GatedPixelCNN
from vqjax.models.vqvae import VQVAE

# Keys of the config groups that are not fields of the module.
_NOT_VQVAE_FIELDS = frozenset({"kernels", "kmeans_init", "kmeans_iters",
                               "dtype"})
DTYPES = ("float32", "bfloat16")


def compute_dtype(name: str) -> jnp.dtype:
  """`config.model.dtype`: the activations' and convolutions' dtype."""
  if name not in DTYPES:
    raise ConfigError(f"model.dtype={name!r} is not one of {DTYPES}; set "
                      "--config.model.dtype=float32 or bfloat16.")
  return jnp.dtype(name)


def vqvae(config: ml_collections.ConfigDict, out_channels: int,
          axis_name: str | None = None) -> VQVAE:
  """The VQVAE of `config.model` and `config.quantizer`."""
  fields = {k: v for group in (config.model, config.quantizer)
            for k, v in group.items() if k not in _NOT_VQVAE_FIELDS}
  return VQVAE(**fields, out_channels=out_channels,
               dtype=compute_dtype(config.model.dtype), axis_name=axis_name)


def pixelcnn(config: ml_collections.ConfigDict, num_values: int,
             num_channels: int, num_classes: int) -> GatedPixelCNN:
  """The GatedPixelCNN of `config.model` over `num_values` values per channel
  (class-conditional on `num_classes` labels if `config.model.conditional`)."""
  m = config.model
  return GatedPixelCNN(
      num_values=num_values, num_channels=num_channels, features=m.features,
      num_layers=m.num_layers, kernel_size=m.kernel_size,
      head_features=m.head_features,
      num_classes=num_classes if m.conditional else 0,
      dtype=compute_dtype(m.dtype))
