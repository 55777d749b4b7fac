"""The modules a config describes (`config.model`, `config.quantizer`)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from vqjax.configs import ConfigError
from vqjax.models.autoencoder import Autoencoder
from vqjax.models.conditioning import TopCodeConditioner
from vqjax.models.pixelcnn import GatedPixelCNN
from vqjax.models.vqvae import VQVAE
from vqjax.models.vqvae2 import VQVAE2

# Keys of the config groups that are not fields of the module.
_NOT_VQVAE_FIELDS = frozenset({"kernels", "kmeans_init", "kmeans_iters",
                               "dtype", "bottleneck", "top_downsamples"})
DTYPES = ("float32", "bfloat16")
BOTTLENECKS = ("vq", "ae", "vae")


def compute_dtype(name: str) -> jnp.dtype:
  """`config.model.dtype`: the activations' and convolutions' dtype."""
  if name not in DTYPES:
    raise ConfigError(f"model.dtype={name!r} is not one of {DTYPES}; set "
                      "--config.model.dtype=float32 or bfloat16.")
  return jnp.dtype(name)


def autoencoder(config: ml_collections.ConfigDict, out_channels: int,
                axis_name: str | None = None) -> VQVAE | VQVAE2 | Autoencoder:
  """The stage-1 model of `config.model` and `config.quantizer`.

  `model.bottleneck` picks it: 'vq' is the VQ-VAE, or the two-level VQ-VAE-2
  when `model.top_downsamples > 0`; 'ae' and 'vae' are the autoencoder and
  Gaussian VAE on the same encoder and decoder, with a continuous latent of
  the code grid's size and `quantizer.code_dim` channels.
  """
  m = config.model
  dtype = compute_dtype(m.dtype)
  if m.bottleneck not in BOTTLENECKS:
    raise ConfigError(f"model.bottleneck={m.bottleneck!r} is not one of "
                      f"{BOTTLENECKS}; set --config.model.bottleneck=vq.")
  if m.top_downsamples < 0 or (m.top_downsamples and m.bottleneck != "vq"):
    raise ConfigError(f"model.top_downsamples={m.top_downsamples} needs "
                      "model.bottleneck='vq' and must be >= 0 (0: one level).")
  if m.bottleneck != "vq":
    return Autoencoder(
        num_hiddens=m.num_hiddens, num_residual_hiddens=m.num_residual_hiddens,
        num_residual_layers=m.num_residual_layers,
        num_downsamples=m.num_downsamples, code_dim=config.quantizer.code_dim,
        variational=m.bottleneck == "vae", out_channels=out_channels,
        dtype=dtype)
  fields = {k: v for group in (m, config.quantizer)
            for k, v in group.items() if k not in _NOT_VQVAE_FIELDS}
  if m.top_downsamples:
    return VQVAE2(**fields, top_downsamples=m.top_downsamples,
                  out_channels=out_channels, dtype=dtype, axis_name=axis_name)
  return VQVAE(**fields, out_channels=out_channels, dtype=dtype,
               axis_name=axis_name)


def pixelcnn(config: ml_collections.ConfigDict, num_values: int,
             num_channels: int, num_classes: int,
             spatially_conditioned: bool = False) -> GatedPixelCNN:
  """The GatedPixelCNN of `config.model` over `num_values` values per channel
  (class-conditional on `num_classes` labels if `config.model.conditional`;
  on a `model.cond_features`-wide map if `spatially_conditioned`)."""
  m = config.model
  return GatedPixelCNN(
      num_values=num_values, num_channels=num_channels, features=m.features,
      num_layers=m.num_layers, kernel_size=m.kernel_size,
      head_features=m.head_features,
      num_classes=num_classes if m.conditional else 0,
      cond_features=m.cond_features if spatially_conditioned else 0,
      dtype=compute_dtype(m.dtype))


def top_code_conditioner(config: ml_collections.ConfigDict, num_codes: int,
                         upsamples: int) -> TopCodeConditioner:
  """The bottom prior's conditioning on a VQ-VAE-2's top codes."""
  if config.model.cond_features <= 0:
    raise ConfigError("A bottom-level prior is conditioned on the top codes; "
                      "set --config.model.cond_features to a positive width.")
  return TopCodeConditioner(num_codes, config.model.cond_features, upsamples,
                            dtype=compute_dtype(config.model.dtype))
