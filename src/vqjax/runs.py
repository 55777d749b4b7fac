"""Finished runs restored for inference: encode, decode, sample.

`restore_vqvae` and `restore_prior` read a run folder (its `config.json` and
latest Orbax checkpoint, or a given step) and return the model with its
variables, without optimizer state. Used by `sample.py`, `vqjax.generate`
and the stage-2 trainer, which need a trained model, not a trainer.

A prior's checkpoint records the stage-1 run it was trained on
(`link_of`), so `restore_prior` restores that VQ-VAE too.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import ml_collections
import numpy as np

from vqjax import checkpoint, likelihood
from vqjax import kernels as kernel_choice
from vqjax.models import build
from vqjax.models.autoencoder import Autoencoder
from vqjax.models.conditioning import TopCodeConditioner
from vqjax.models.pixelcnn import GatedPixelCNN
from vqjax.models.vqvae import VQVAE, to_float, to_uint8


def read_run(workdir: str, step: int | None = None
             ) -> tuple[ml_collections.ConfigDict, dict, dict, int]:
  """`(config, variables, meta, step)` of a run folder's checkpoint (the
  latest unless `step`), without optimizer state: the one way every
  restore starts."""
  config = checkpoint.read_config(workdir)
  ckpt = checkpoint.Checkpointer(workdir, create=False)
  try:
    variables, meta, step = ckpt.restore_variables(step)
  finally:
    ckpt.close()
  return config, variables, meta, int(step)


def run_kind(workdir: str) -> str:
  """'vqvae', 'prior', 'classifier' (what trained in `workdir`), from its
  latest checkpoint's metadata."""
  ckpt = checkpoint.Checkpointer(workdir, create=False)
  try:
    meta, _ = ckpt.restore_meta()
  finally:
    ckpt.close()
  return meta.get("kind", "vqvae" if "image_shape" in meta else "unknown")


@dataclasses.dataclass(frozen=True)
class TrainedVQVAE:
  """A restored stage-1 run, ready to encode and decode on one device.

  `kernels` says how to compute it (`vqjax.kernels`); the default, `auto`,
  suits the backend this process runs on, whatever the run trained with.
  """
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: VQVAE
  variables: dict
  image_shape: tuple[int, int, int]  # (H, W, C)
  kernels: str = "auto"

  @property
  def levels(self) -> tuple[str, ...]:
    """Its code grids: `("",)` for a VQ-VAE, `("top", "bottom")` for a
    VQ-VAE-2, `()` for an AE or VAE."""
    return tuple(self.model.levels)

  @property
  def code_shapes(self) -> dict[str, tuple[int, int]]:
    """`(h, w)` of each level's grid of codes for one image."""
    h, w, _ = self.image_shape
    m = self.config.model
    factors = {"": m.num_downsamples, "bottom": m.num_downsamples,
               "top": m.num_downsamples + m.top_downsamples}
    return {level: (h // 2 ** factors[level], w // 2 ** factors[level])
            for level in self.levels}

  @property
  def code_shape(self) -> tuple[int, int]:
    """`(h, w)`, the grid of codes of one image (one-level VQ-VAE)."""
    return self.code_shapes[self._single_level()]

  @property
  def num_codes(self) -> int:
    """K, the codebook size (of each level)."""
    return self.config.quantizer.num_codes

  def _single_level(self) -> str:
    if self.levels != ("",):
      raise ValueError(
          f"The run in {self.workdir} has code levels {self.levels}; use "
          "encode_levels / decode_levels (and a prior's --config.level).")
    return ""

  def _jit(self, method, prepare, finish, **kwargs):
    def fn(variables, *x):
      with kernel_choice.scope(self.kernels, inference=True):
        return finish(self.model.apply(variables, *prepare(*x), method=method,
                                       **kwargs))
    compiled = jax.jit(fn)
    return lambda *x: compiled(self.variables, *x)

  @functools.cached_property
  def encode_levels(self):
    """uint8 images `[B, H, W, C]` -> `{level: codes [B, h, w] int32}`
    (jitted)."""
    single = self.levels == ("",)
    return self._jit(
        type(self.model).encode_to_indices, lambda x: (to_float(x),),
        (lambda codes: {"": codes}) if single else (lambda codes: codes))

  @functools.cached_property
  def decode_levels(self):
    """`{level: codes [B, h, w]}` -> uint8 images `[B, H, W, C]` (jitted)."""
    levels = self.levels
    decode = self._jit(type(self.model).decode_indices, lambda *c: c, to_uint8)
    return lambda codes: decode(*(codes[level] for level in levels))

  def encode(self, images: np.ndarray) -> jax.Array:
    """uint8 images `[B, H, W, C]` -> codes `[B, h, w]` int32 (one level)."""
    return self.encode_levels(images)[self._single_level()]

  def decode(self, codes: np.ndarray) -> jax.Array:
    """Codes `[B, h, w]` -> uint8 images `[B, H, W, C]` (one level)."""
    return self.decode_levels({self._single_level(): codes})

  @functools.cached_property
  def reconstruct(self):
    """uint8 images `[B, H, W, C]` -> their reconstructions, uint8 (jitted;
    a VAE decodes its posterior mean)."""
    kwargs = {"sample": False} if isinstance(self.model, Autoencoder) else {}
    return self._jit(None, lambda x: (to_float(x),),
                     lambda out: to_uint8(out["reconstruction"]), **kwargs)

  def sample_latents(self, key: jax.Array, num: int) -> np.ndarray:
    """A VAE's samples: `num` latents from N(0, I), decoded to uint8 images."""
    if not (isinstance(self.model, Autoencoder) and self.model.variational):
      raise ValueError(f"The run in {self.workdir} is not a VAE.")
    h, w, _ = self.image_shape
    factor = 2 ** self.config.model.num_downsamples
    z = jax.random.normal(key, (num, h // factor, w // factor,
                                self.model.code_dim))
    return np.asarray(self._decode_latents(z))

  @functools.cached_property
  def _decode_latents(self):
    return self._jit(Autoencoder.decode, lambda z: (z,), to_uint8)

  def codebook(self, level: str = "") -> np.ndarray:
    """`[K, D]` of `level`."""
    method = type(self.model).codebook
    args = (level,) if level else ()
    return np.asarray(self.model.apply(self.variables, *args, method=method))


def restore_vqvae(workdir: str, step: int | None = None,
                  kernels: str = "auto") -> TrainedVQVAE:
  """Loads a stage-1 run (latest checkpoint unless `step`) from its folder."""
  config, variables, meta, step = read_run(workdir, step)
  if "image_shape" not in meta:
    raise checkpoint.CheckpointError(
        f"{workdir!r} is not a VQ-VAE run (its checkpoint has no image_shape); "
        "point --config.vqvae_workdir at a train_vqvae.py workdir.")
  image_shape = tuple(meta["image_shape"])
  kernel_choice.resolve(kernels)  # Fail early on a bad name.
  # The decoder likelihood's variance is the trainer's, not the model's.
  variables = {k: v for k, v in variables.items()
               if k != likelihood.STATE_KEY}
  return TrainedVQVAE(workdir=os.path.abspath(workdir), step=int(step),
                      config=config,
                      model=build.autoencoder(config, image_shape[-1]),
                      variables=variables, image_shape=image_shape,
                      kernels=kernels)


def link_of(vqvae: TrainedVQVAE) -> dict:
  """What a prior's checkpoint records about its stage-1 run."""
  return {"workdir": vqvae.workdir, "step": vqvae.step,
          "config": checkpoint.config_to_dict(vqvae.config)}


def check_link(meta: dict, vqvae: TrainedVQVAE, prior_workdir: str) -> None:
  """Raises unless `vqvae` produces the codes the prior was trained on."""
  level = meta.get("level") or ""
  expected = (meta["num_values"], tuple(meta["grid_shape"][:2]))
  found = (vqvae.num_codes, tuple(vqvae.code_shapes.get(level, (0, 0))))
  if expected != found:
    raise checkpoint.CheckpointError(
        f"The prior in {prior_workdir!r} was trained on codes with K="
        f"{expected[0]} on a {expected[1][0]}x{expected[1][1]} grid, but the "
        f"VQ-VAE in {vqvae.workdir!r} has K={found[0]} on a "
        f"{found[1][0]}x{found[1][1]} grid; point it at the stage-1 run it "
        f"was trained on ({meta['vqvae']['workdir']!r}).")


def samples_to_images(samples: np.ndarray,
                      vqvae: TrainedVQVAE | None) -> np.ndarray:
  """Prior samples `[B, h, w, C]` -> uint8 images `[B, H, W, C']` (decoded
  by `vqvae` when they are codes, as they are when it is given)."""
  if vqvae is None:
    return samples.astype(np.uint8)
  return np.asarray(vqvae.decode(samples[..., 0]))


@dataclasses.dataclass(frozen=True)
class TrainedPrior:
  """A restored stage-2 run and, for a code prior, its stage-1 VQ-VAE."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: GatedPixelCNN
  variables: dict
  meta: dict
  vqvae: TrainedVQVAE | None
  conditioner: TopCodeConditioner | None = None
  conditioner_variables: dict | None = None

  @property
  def level(self) -> str:
    """Which of a VQ-VAE-2's code grids it models ('top' or 'bottom'); ''
    for a one-level VQ-VAE's codes or raw pixels."""
    return self.meta.get("level") or ""

  def condition(self, top_codes: np.ndarray) -> jax.Array:
    """A bottom prior's conditioning map `[B, h_b, w_b, F_c]` for top codes
    `[B, h_t, w_t]`."""
    return self._condition(self.conditioner_variables,
                           jax.numpy.asarray(top_codes, jax.numpy.int32))

  @functools.cached_property
  def _condition(self):
    return jax.jit(self.conditioner.apply)

  @property
  def sample_shape(self) -> tuple[int, int, int]:
    """`(h, w, C)` of one sample: a code grid (C = 1) or an image."""
    return tuple(self.meta["grid_shape"])

  @property
  def num_classes(self) -> int:
    return int(self.meta.get("num_classes") or 0)


def restore_prior(workdir: str, vqvae_workdir: str | None = None,
                  step: int | None = None) -> TrainedPrior:
  """Loads a stage-2 run and the VQ-VAE its checkpoint links to (or
  `vqvae_workdir`, which must then produce the same kind of codes)."""
  config, variables, meta, step = read_run(workdir, step)
  if meta.get("kind") != "prior":
    raise checkpoint.CheckpointError(
        f"{workdir!r} is not a prior run (train_prior.py); pass the --workdir "
        "of a train_prior.py run.")
  vqvae = None
  if meta.get("vqvae"):
    link = meta["vqvae"]
    vqvae = restore_vqvae(vqvae_workdir or link["workdir"],
                          None if vqvae_workdir else link["step"])
    check_link(meta, vqvae, workdir)
  params = variables["params"]
  conditioner = conditioner_variables = None
  if meta.get("level") == "bottom":
    conditioner = build.top_code_conditioner(
        config, meta["num_values"], vqvae.config.model.top_downsamples)
    conditioner_variables = {"params": params["conditioner"]}
    params = params["pixelcnn"]
  model = build.pixelcnn(config, meta["num_values"], meta["grid_shape"][-1],
                         meta.get("num_classes") or 0,
                         spatially_conditioned=conditioner is not None)
  return TrainedPrior(workdir=os.path.abspath(workdir), step=int(step),
                      config=config, model=model, variables={"params": params},
                      meta=meta, vqvae=vqvae, conditioner=conditioner,
                      conditioner_variables=conditioner_variables)
