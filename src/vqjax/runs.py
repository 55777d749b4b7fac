"""Finished runs restored for inference: encode, decode, sample.

`restore_stage1` and `restore_prior` read a run folder (its `config.json`
and latest Orbax checkpoint, or a given step) and return the model with its
variables, without optimizer state. Used by `sample.py`, `vqjax.generate`
and the stage-2 trainer, which need a trained model, not a trainer. The
models are built for inference with the kernels `kernels` picks
(`vqjax.models.build`; `auto` suits the backend this process runs on,
whatever the run trained with).

A prior's checkpoint records the stage-1 run it was trained on
(`link_of`), so `restore_prior` restores that run too. A prior trained with
`train.ema_decay > 0` restores its moving average of the parameters.

Checkpoints written before vqjax 0.2 restore: their one-level prior
parameters (the PixelCNN's at the top of the tree) are moved under
`pixelcnn`, a one-level level `""` reads as `"codes"`, and stage 1's
decoder variance (then in `model_state`) is dropped from the model's
variables.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vqjax import checkpoint, configs
from vqjax.models import build
from vqjax.models.autoencoder import Autoencoder
from vqjax.models.code_prior import CodePrior
from vqjax.models.vqvae import LEVEL, VQVAE, to_float, to_uint8
from vqjax.models.vqvae2 import VQVAE2

# What older checkpoints called things (see the module docstring).
_OLD_LIKELIHOOD_KEY = "likelihood"
_OLD_STAGE1_KIND = "vqvae"


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
  """'stage1', 'prior', 'classifier' (what trained in `workdir`), from its
  latest checkpoint's metadata."""
  ckpt = checkpoint.Checkpointer(workdir, create=False)
  try:
    meta, _ = ckpt.restore_meta()
  finally:
    ckpt.close()
  kind = meta.get("kind", "stage1" if "image_shape" in meta else "unknown")
  return "stage1" if kind == _OLD_STAGE1_KIND else kind


@dataclasses.dataclass(frozen=True)
class TrainedStage1:
  """A restored stage-1 run (VQ-VAE, VQ-VAE-2, AE or VAE), ready to encode
  and decode on one device. Code grids are `[B, h, w, C]` int32 per level,
  C = `code_channels` codes of `num_codes` values each per position.
  """
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: VQVAE | VQVAE2 | Autoencoder
  variables: dict
  image_shape: tuple[int, int, int]  # (H, W, C)

  @property
  def levels(self) -> tuple[str, ...]:
    """Its code grids: `("codes",)` for a VQ-VAE, `("top", "bottom")` for a
    VQ-VAE-2, `()` for an AE or VAE."""
    return tuple(self.model.levels)

  @property
  def code_shapes(self) -> dict[str, tuple[int, int]]:
    """`(h, w)` of each level's grid of codes for one image."""
    h, w, _ = self.image_shape
    m = self.config.model
    factors = {LEVEL: m.num_downsamples, "bottom": m.num_downsamples,
               "top": m.num_downsamples + m.top_downsamples}
    return {level: (h // 2 ** factors[level], w // 2 ** factors[level])
            for level in self.levels}

  @property
  def code_shape(self) -> tuple[int, int]:
    """`(h, w)`, the grid of codes of one image (one-level VQ-VAE)."""
    return self.code_shapes[self._single_level()]

  @property
  def num_codes(self) -> int:
    """K, the values each code channel takes (of each level): the codebook
    size, prod(levels) for FSQ, 2^d for LFQ; 0 for an AE or VAE."""
    return self.model.codebook_size if self.levels else 0

  @property
  def code_channels(self) -> int:
    """C, the code channels per position: the residual depth or the number
    of groups of a VQ, else 1; 0 for an AE or VAE."""
    return self.model.code_channels if self.levels else 0

  def _single_level(self) -> str:
    if self.levels != (LEVEL,):
      raise ValueError(
          f"The run in {self.workdir} has code levels {self.levels}; use "
          "encode_levels / decode_levels (and a prior's --config.level).")
    return LEVEL

  def _jit(self, method, prepare, finish, **kwargs):
    def fn(variables, *x):
      return finish(self.model.apply(variables, *prepare(*x), method=method,
                                     **kwargs))
    compiled = jax.jit(fn)
    return lambda *x: compiled(self.variables, *x)

  @functools.cached_property
  def encode_levels(self):
    """uint8 images `[B, H, W, C]` -> `{level: codes [B, h, w, C_codes]
    int32}` (jitted)."""
    single = self.levels == (LEVEL,)
    return self._jit(
        type(self.model).encode_to_indices, lambda x: (to_float(x),),
        (lambda codes: {LEVEL: codes}) if single else (lambda codes: codes))

  @functools.cached_property
  def decode_levels(self):
    """`{level: codes [B, h, w, C_codes]}` -> uint8 images `[B, H, W, C]`
    (jitted)."""
    levels = self.levels
    decode = self._jit(type(self.model).decode_indices, lambda *c: c, to_uint8)
    return lambda codes: decode(*(codes[level] for level in levels))

  def encode(self, images: np.ndarray) -> jax.Array:
    """uint8 images `[B, H, W, C]` -> codes `[B, h, w, C_codes]` int32 (one
    level)."""
    return self.encode_levels(images)[self._single_level()]

  def decode(self, codes: np.ndarray) -> jax.Array:
    """Codes `[B, h, w, C_codes]` -> uint8 images `[B, H, W, C]` (one
    level)."""
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

  def codebook(self, level: str = LEVEL) -> np.ndarray:
    """The stored codebook of `level` (`[K, D]` for the default quantizer)."""
    method = type(self.model).codebook
    args = () if level == LEVEL else (level,)
    return np.asarray(self.model.apply(self.variables, *args, method=method))

  def code_tables(self, level: str = LEVEL) -> np.ndarray:
    """`[C, K, d]`: what each code channel of `level` looks up, in the
    quantizer's lookup space (FSQ's and LFQ's implicit codebooks too)."""
    method = type(self.model).code_tables
    args = () if level == LEVEL else (level,)
    return np.asarray(self.model.apply(self.variables, *args, method=method))


def restore_stage1(workdir: str, step: int | None = None,
                   kernels: str = "auto") -> TrainedStage1:
  """Loads a stage-1 run (latest checkpoint unless `step`) from its folder,
  its model built for inference with `kernels` (`vqjax.models.build`)."""
  config, variables, meta, step = read_run(workdir, step)
  if "image_shape" not in meta:
    raise checkpoint.CheckpointError(
        f"{workdir!r} is not a stage-1 run (its checkpoint has no "
        "image_shape); point it at a train_vqvae.py "
        "workdir.")
  image_shape = tuple(meta["image_shape"])
  config.model.kernels = kernels
  _with_quantizer_defaults(config)
  variables.pop(_OLD_LIKELIHOOD_KEY, None)
  model = build.stage1(config, image_shape[-1], inference=True)
  return TrainedStage1(workdir=os.path.abspath(workdir), step=int(step),
                       config=config, model=model, variables=variables,
                       image_shape=image_shape)


def _with_quantizer_defaults(config: ml_collections.ConfigDict) -> None:
  """A stage-1 run's saved config with the `quantizer.*` keys added since it
  was written set to their defaults, which is what that run computed."""
  if "quantizer" not in config:
    return
  with config.unlocked():
    for key, value in configs.vqvae_defaults().quantizer.items():
      if key not in config.quantizer:
        config.quantizer[key] = value


def link_of(vqvae: TrainedStage1) -> dict:
  """What a prior's checkpoint records about its stage-1 run."""
  return {"workdir": vqvae.workdir, "step": vqvae.step,
          "config": checkpoint.config_to_dict(vqvae.config)}


def prior_level(meta: dict) -> str | None:
  """The code grid a prior's checkpoint models (None: raw pixels)."""
  if not meta.get("vqvae"):
    return None
  return meta.get("level") or LEVEL


def check_link(meta: dict, vqvae: TrainedStage1, prior_workdir: str) -> None:
  """Raises unless `vqvae` produces the codes the prior was trained on."""
  level = prior_level(meta)
  grid = meta["grid_shape"]
  expected = (meta["num_values"], tuple(grid[:2]), grid[-1])
  found = (vqvae.num_codes, tuple(vqvae.code_shapes.get(level, (0, 0))),
           vqvae.code_channels)
  if expected != found:
    describe = lambda k, hw, c: (  # noqa: E731
        f"K={k} on a {hw[0]}x{hw[1]}" + (f"x{c}" if c != 1 else "") + " grid")
    raise checkpoint.CheckpointError(
        f"The prior in {prior_workdir!r} was trained on codes with "
        f"{describe(*expected)}, but the VQ-VAE in {vqvae.workdir!r} has "
        f"{describe(*found)}; point it at the stage-1 run it was trained on "
        f"({meta['vqvae']['workdir']!r}).")


def samples_to_images(samples: np.ndarray,
                      vqvae: TrainedStage1 | None) -> np.ndarray:
  """Prior samples `[B, h, w, C]` -> uint8 images `[B, H, W, C']` (decoded
  by `vqvae` when they are codes, as they are when it is given)."""
  if vqvae is None:
    return samples.astype(np.uint8)
  return np.asarray(vqvae.decode(samples))


@dataclasses.dataclass(frozen=True)
class TrainedPrior:
  """A restored stage-2 run and, for a code prior, its stage-1 run."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: CodePrior
  variables: dict
  meta: dict
  vqvae: TrainedStage1 | None

  @property
  def level(self) -> str | None:
    """The stage-1 code grid it models: 'codes' (a VQ-VAE's), 'top' or
    'bottom' (a VQ-VAE-2's); None for raw pixels."""
    return prior_level(self.meta)

  @property
  def sample_shape(self) -> tuple[int, int, int]:
    """`(h, w, C)` of one sample: a code grid (C code channels) or an
    image."""
    return tuple(self.meta["grid_shape"])

  @property
  def num_classes(self) -> int:
    """Classes (or clusters) the prior is conditioned on; 0 if none."""
    return int(self.meta.get("num_classes") or 0)

  @property
  def null_label(self) -> int | None:
    """The class meaning "no label" of a prior trained with label dropout,
    which classifier-free guidance samples with; None otherwise."""
    label = self.meta.get("null_label")
    return None if label is None else int(label)

  @property
  def cluster_counts(self) -> np.ndarray | None:
    """`[C]` training examples per cluster of a cluster-conditioned prior
    (`vqjax.clusters`), which samples its clusters in these proportions;
    None otherwise."""
    counts = self.meta.get("cluster_counts")
    return None if counts is None else np.asarray(counts, np.int64)


def _ema_params(workdir: str, step: int) -> dict:
  """The moving average of a prior's parameters (`PriorTrainState
  .ema_params`) saved in its checkpoint `step`."""
  path = os.path.join(os.path.abspath(workdir), checkpoint.CHECKPOINT_DIR,
                      str(step), "state")
  with ocp.StandardCheckpointer() as reader:
    return reader.restore(path)["ema_params"]


def _with_prior_defaults(config: ml_collections.ConfigDict
                         ) -> ml_collections.ConfigDict:
  """A prior's saved config with the keys added since it was written (all
  of which default to off) set to their defaults."""
  defaults = configs.prior_defaults()
  with config.unlocked():
    for group in ("model", "train", "sample"):
      for key, value in defaults[group].items():
        if key not in config[group]:
          config[group][key] = value
  return config


def restore_prior(workdir: str, vqvae_workdir: str | None = None,
                  step: int | None = None, kernels: str = "auto"
                  ) -> TrainedPrior:
  """Loads a stage-2 run and the stage-1 run its checkpoint links to (or
  `vqvae_workdir`, which must then produce the same kind of codes). Its
  variables are the moving average of the parameters when it kept one."""
  config, variables, meta, step = read_run(workdir, step)
  if meta.get("kind") != "prior":
    raise checkpoint.CheckpointError(
        f"{workdir!r} is not a prior run (train_prior.py); pass the --workdir "
        "of a train_prior.py run.")
  config = _with_prior_defaults(config)
  if meta.get("ema"):
    variables = {"params": _ema_params(workdir, step)}
  vqvae = None
  if meta.get("vqvae"):
    link = meta["vqvae"]
    vqvae = restore_stage1(vqvae_workdir or link["workdir"],
                           None if vqvae_workdir else link["step"], kernels)
    check_link(meta, vqvae, workdir)
  params = variables["params"]
  if "pixelcnn" not in params:  # A one-level prior from before vqjax 0.2.
    params = {"pixelcnn": params}
  bottom = prior_level(meta) == "bottom"
  config.model.kernels = kernels
  model = build.code_prior(
      config, meta["num_values"], meta["grid_shape"][-1],
      meta.get("num_classes") or 0,
      top_num_codes=meta["num_values"] if bottom else 0,
      top_upsamples=vqvae.config.model.top_downsamples if bottom else 0,
      inference=True)
  return TrainedPrior(workdir=os.path.abspath(workdir), step=int(step),
                      config=config, model=model, variables={"params": params},
                      meta=meta, vqvae=vqvae)
