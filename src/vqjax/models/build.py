"""The models a config describes (`config.model`, `config.quantizer`), built
with the kernels `config.model.kernels` picks.

`model.kernels` says how a model is computed, not what it is:

* `xla`: Flax's own layers, compiled by XLA for whatever backend runs them
  (cuDNN convolutions on a GPU, XLA's on a TPU);
* `xla_cpu`: the same layers computed by `vqjax.xla_cpu`'s formulations,
  which XLA:CPU runs fast (Winograd convolutions, custom VJPs), injected into
  the modules' `conv` / `conv_transpose` / `nearest_code` / `valid_conv`
  fields;
* `auto` (the default): `xla_cpu` on the CPU backend, `xla` everywhere else.

The parameters are the same for all three, so a checkpoint trained with one
restores and resumes with another. `inference=True` builds for one-off
encoding, decoding, evaluation and sampling: on `xla_cpu`, direct
convolutions (faster to compile, less memory, exactly causal in a PixelCNN)
instead of Winograd's.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vqjax import xla_cpu
from vqjax.configs import ConfigError
from vqjax.models.autoencoder import Autoencoder
from vqjax.models import quantizers
from vqjax.models.code_prior import CodePrior
from vqjax.models.vector_quantizer import VectorQuantizer
from vqjax.models.vqvae import VQVAE
from vqjax.models.vqvae2 import VQVAE2

KERNELS = ("auto", "xla", "xla_cpu")
DTYPES = ("float32", "bfloat16")
BOTTLENECKS = ("vq", "ae", "vae")
# Keys of `config.model` / `config.quantizer` that are not module fields.
_NOT_STAGE1_FIELDS = frozenset({"kernels", "kmeans_init", "kmeans_iters",
                                "dtype", "bottleneck", "top_downsamples",
                                "levels"})


def resolve_kernels(name: str) -> str:
  """`config.model.kernels` -> `xla` or `xla_cpu` (`auto`: by backend)."""
  if name not in KERNELS:
    raise ConfigError(f"model.kernels={name!r} is not one of {KERNELS}; set "
                      "--config.model.kernels=auto (or xla, xla_cpu).")
  if name == "auto":
    return "xla_cpu" if jax.default_backend() == "cpu" else "xla"
  return name


def compute_dtype(name: str) -> jnp.dtype:
  """`config.model.dtype`: the activations' and convolutions' dtype."""
  if name not in DTYPES:
    raise ConfigError(f"model.dtype={name!r} is not one of {DTYPES}; set "
                      "--config.model.dtype=float32 or bfloat16.")
  return jnp.dtype(name)


def layers(kernels: str, inference: bool = False) -> dict[str, Any]:
  """The module fields that compute a model with `kernels`: `{}` for
  Flax's own (`xla`), else `conv`, `conv_transpose` and `nearest_code` (for
  stage 1 and the prior's conditioner) and `valid_conv` (the PixelCNN's)."""
  if resolve_kernels(kernels) == "xla":
    return {}
  fields = {"conv": functools.partial(xla_cpu.Conv, winograd=not inference),
            "conv_transpose": functools.partial(xla_cpu.ConvTranspose,
                                                winograd=not inference),
            "nearest_code": xla_cpu.nearest_code}
  if not inference:  # Winograd is causal only up to rounding: training only.
    fields["valid_conv"] = xla_cpu.valid_conv
  return fields


def _only(fields: dict, *names: str) -> dict:
  return {k: v for k, v in fields.items() if k in names}


def stage1(config: ml_collections.ConfigDict, out_channels: int,
           axis_name: str | None = None, inference: bool = False
           ) -> VQVAE | VQVAE2 | Autoencoder:
  """The stage-1 model of `config.model` and `config.quantizer`.

  `model.bottleneck` picks it: 'vq' is the VQ-VAE, or the two-level VQ-VAE-2
  when `model.top_downsamples > 0`; 'ae' and 'vae' are the autoencoder and
  Gaussian VAE on the same encoder and decoder, with a continuous latent of
  the code grid's size and `quantizer.code_dim` channels.

  Args:
    config: the run's config.
    out_channels: C of the images.
    axis_name: the data-parallel axis the EMA statistics are reduced over
      (inside `pmap`); None outside.
    inference: built for one-off encoding and decoding (see the module doc).
  """
  m = config.model
  dtype = compute_dtype(m.dtype)
  kernels = layers(m.kernels, inference)
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
        dtype=dtype, **_only(kernels, "conv", "conv_transpose"))
  q = config.quantizer
  fields = {k: v for group in (m, q)
            for k, v in group.items() if k not in _NOT_STAGE1_FIELDS}
  check_quantizer(config)
  # A model's `levels` are its code grids; FSQ's levels are `fsq_levels`.
  fields["fsq_levels"] = tuple(int(l) for l in q.levels)
  fields.update(out_channels=out_channels, dtype=dtype, axis_name=axis_name,
                **_only(kernels, "conv", "conv_transpose", "nearest_code"))
  if m.top_downsamples:
    return VQVAE2(**fields, top_downsamples=m.top_downsamples)
  return VQVAE(**fields)


def check_quantizer(config: ml_collections.ConfigDict) -> None:
  """Raises a ConfigError for `config.quantizer` settings that cannot work
  together, or that do not apply to its `kind` (and would be ignored)."""
  q = config.quantizer
  fields = dict(gradient=q.gradient, cosine=q.cosine, lookup_dim=q.lookup_dim,
                depth=q.depth, groups=q.groups, dropout=q.dropout,
                shared_codebook=q.shared_codebook)
  try:
    quantizers.check_fields(q.kind, fsq_levels=tuple(q.levels),
                            num_codes=q.num_codes, **fields)
    if q.kind == "vq":
      VectorQuantizer(q.num_codes, q.code_dim, use_ema=q.use_ema,
                      dead_code_threshold=q.dead_code_threshold,
                      **fields)._check()
  except ValueError as e:
    raise ConfigError(f"{e} Set the --config.quantizer.* keys accordingly "
                      "(docs/quantizers.md).") from e


def null_label(config: ml_collections.ConfigDict,
               num_classes: int) -> int | None:
  """The class index meaning "no label" of a prior trained with
  `model.label_dropout > 0` on `num_classes` classes (or clusters): the extra
  last class of its embedding, which classifier-free guidance samples with
  (`vqjax.sampling.sample`); None for other priors."""
  m = config.model
  if not m.get("label_dropout") or not (m.conditional or m.num_clusters):
    return None
  return num_classes


def code_prior(config: ml_collections.ConfigDict, num_values: int,
               num_channels: int, num_classes: int = 0,
               top_num_codes: int = 0, top_upsamples: int = 0,
               inference: bool = False) -> CodePrior:
  """The prior of `config.model` over `num_values` values per channel.

  Args:
    config: the run's config (`model.features`, `num_layers`, ...).
    num_values: V (K codes, or 256 for pixels).
    num_channels: C of the grid.
    num_classes: the labels' classes, used iff `model.conditional`, or the
      clusters' (`model.num_clusters`, `vqjax.clusters`). With
      `model.label_dropout > 0` the model has one class more, `num_classes`
      itself, meaning "no label" (`null_label`).
    top_num_codes: > 0 for a VQ-VAE-2's bottom prior: K of its top codes,
      which it is conditioned on through a `model.cond_features`-wide map.
    top_upsamples: the top grid's downsampling relative to the bottom grid.
    inference: built for evaluation and sampling (see the module doc).
  """
  m = config.model
  if m.attention_every and num_channels != 1:
    raise ConfigError(f"model.attention_every={m.attention_every} needs one "
                      f"value per position, not {num_channels} ordered "
                      "channels (pixels, or code depths/groups); set "
                      "--config.model.attention_every=0.")
  if top_num_codes and m.cond_features <= 0:
    raise ConfigError("A bottom-level prior is conditioned on the top codes; "
                      "set --config.model.cond_features to a positive width.")
  return CodePrior(
      num_values=num_values, num_channels=num_channels, features=m.features,
      num_layers=m.num_layers, kernel_size=m.kernel_size,
      head_features=m.head_features,
      num_classes=(num_classes + (null_label(config, num_classes) is not None)
                   if m.conditional or m.num_clusters else 0),
      attention_every=m.attention_every, attention_heads=m.attention_heads,
      dropout=m.dropout,
      top_num_codes=top_num_codes, top_upsamples=top_upsamples,
      cond_features=m.cond_features if top_num_codes else 0,
      dtype=compute_dtype(m.dtype),
      **_only(layers(m.kernels, inference), "conv", "conv_transpose",
              "valid_conv"))
