"""Stage 2: a Gated PixelCNN prior over VQ-VAE codes, or over raw pixels.

With `config.vqvae_workdir` set, the stage-1 run is restored through Orbax,
the train and test splits are encoded to code grids once (cached in the
prior's workdir) and the PixelCNN learns p(codes). With it empty, the same
model learns p(pixels) with 256 values per channel.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from vqjax import data, images, kernels, runs, sampling
from vqjax.configs import ConfigError
from vqjax.models import build
from vqjax.parallel import AXIS
from vqjax.runs import TrainedVQVAE
from vqjax.train import loop
from vqjax.train.state import TrainState, make_optimizer

CODES_FILE = "codes_{split}.npz"


def check_image_shape(vqvae: TrainedVQVAE, dataset: data.Dataset) -> None:
  """Raises unless `vqvae` was trained on images of the dataset's shape."""
  if tuple(dataset.shape) != tuple(vqvae.image_shape):
    raise ConfigError(
        f"The prior's data {dataset.name!r} has images of shape "
        f"{dataset.shape} but the VQ-VAE in {vqvae.workdir} was trained on "
        f"{vqvae.image_shape}; use the same --config.data as stage 1.")


def encode_split(vqvae: TrainedVQVAE, dataset: data.Dataset, level: str = "",
                 batch_size: int = 1000) -> data.Dataset:
  """Images `[N, H, W, C]` -> a Dataset of `level`'s codes `[N, h, w, 1]`
  (int16/32); for a VQ-VAE-2's bottom level its `conditions` are the top
  codes `[N, h_t, w_t]`."""
  check_image_shape(vqvae, dataset)
  dtype = np.int16 if vqvae.num_codes <= np.iinfo(np.int16).max else np.int32
  shapes = vqvae.code_shapes
  codes = np.empty((len(dataset),) + shapes[level] + (1,), dtype)
  top = (np.empty((len(dataset),) + shapes["top"], dtype)
         if level == "bottom" else None)
  labels = np.empty((len(dataset),), np.int32)
  for start in range(0, len(codes), batch_size):
    chunk = dataset.batch(np.arange(start, min(start + batch_size, len(codes))))
    end = start + len(chunk["image"])
    encoded = vqvae.encode_levels(chunk["image"])
    codes[start:end, ..., 0] = np.asarray(encoded[level])
    if top is not None:
      top[start:end] = np.asarray(encoded["top"])
    labels[start:end] = chunk["label"]
  return data.Dataset(name=f"{dataset.name}:codes", images=codes,
                      labels=labels, num_classes=dataset.num_classes,
                      conditions=top)


def cached_codes(vqvae: TrainedVQVAE, dataset: data.Dataset, split: str,
                 workdir: str, level: str = "") -> data.Dataset:
  """`encode_split`, cached in `workdir` for this VQ-VAE run, step and level."""
  path = os.path.join(workdir, CODES_FILE.format(split=split))
  key = f"{vqvae.workdir}@{vqvae.step}:{level}"
  if os.path.exists(path):
    with np.load(path) as cached:
      if (str(cached["vqvae"]) == key and "labels" in cached and
          len(cached["codes"]) == len(dataset)):
        return data.Dataset(name=f"{dataset.name}:codes", images=cached["codes"],
                            labels=cached["labels"],
                            num_classes=dataset.num_classes,
                            conditions=cached["top"] if "top" in cached
                            else None)
  encoded = encode_split(vqvae, dataset, level)
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp.npz"
  extra = {} if encoded.conditions is None else {"top": encoded.conditions}
  np.savez(tmp, codes=encoded.images, labels=encoded.labels, vqvae=key,
           **extra)
  os.replace(tmp, path)
  return encoded


def check_level(level: str, vqvae: TrainedVQVAE) -> None:
  """Raises unless `level` names one of the VQ-VAE's code grids."""
  if not vqvae.levels:
    raise ConfigError(f"The run in {vqvae.workdir} is an AE/VAE (no codes); "
                      "point --config.vqvae_workdir at a VQ-VAE run.")
  if level not in vqvae.levels:
    choices = " or ".join(f"--config.level={l}" for l in vqvae.levels)
    raise ConfigError(
        f"--config.level={level!r} does not name a code grid of the VQ-VAE in "
        f"{vqvae.workdir}; set {choices or '--config.level=' + repr('')}.")


class PriorTask:
  """Trains a GatedPixelCNN by maximum likelihood (cross-entropy in nats)."""
  progress_keys = ("loss", "bits")

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               datasets: tuple[data.Dataset, data.Dataset, int] | None = None):
    """Restores the linked VQ-VAE and loads the images `config` names (their
    codes are encoded on first use of `train_data` / `test_data`), or takes
    `datasets = (train, test, num_values)` as given (benchmarks)."""
    self.config = config
    self.workdir = workdir
    self.vqvae: TrainedVQVAE | None = None
    self.level = config.level
    if datasets is not None:
      self.train_data, self.test_data, self.num_values = datasets
      self._images = {}
      self.sample_shape = tuple(self.train_data.shape)
    else:
      self._images = {split: data.load(config.data, split)
                      for split in ("train", "test")}
      self.sample_shape = tuple(self._images["train"].shape)  # (h, w, C)
      self.num_values = 256
      if config.vqvae_workdir:
        self.vqvae = runs.restore_vqvae(config.vqvae_workdir)
        check_image_shape(self.vqvae, self._images["train"])
        check_level(self.level, self.vqvae)
        self.sample_shape = self.vqvae.code_shapes[self.level] + (1,)
        self.num_values = self.vqvae.num_codes
      elif self.level:
        raise ConfigError("--config.level needs --config.vqvae_workdir (a "
                          "VQ-VAE-2 run); leave it empty for raw pixels.")
    labelled = self._images["train"] if self._images else self.train_data
    self.num_classes = labelled.num_classes
    if config.model.conditional and self.num_classes == 0:
      raise ConfigError(f"--config.model.conditional=True needs labels, but "
                        f"{config.data.name!r} has none.")
    self.conditioner = None
    if self.level == "bottom":
      m = self.vqvae.config.model
      self.conditioner = build.top_code_conditioner(
          config, self.vqvae.num_codes, m.top_downsamples)
    self.model = build.pixelcnn(config, self.num_values,
                                self.sample_shape[-1], self.num_classes,
                                spatially_conditioned=self.conditioner
                                is not None)
    self.kernels = kernels.resolve(config.model.kernels)
    self.has_initialize = False

  def _split(self, split: str) -> data.Dataset:
    if self.vqvae is None:
      return self._images[split]
    return cached_codes(self.vqvae, self._images[split], split, self.workdir,
                        self.level)

  @functools.cached_property
  def train_data(self) -> data.Dataset:
    """The training split: images, or their codes under the linked VQ-VAE."""
    return self._split("train")

  @functools.cached_property
  def test_data(self) -> data.Dataset:
    return self._split("test")

  def check_resume(self, meta: dict) -> None:
    """A resumed code prior must see the codes it was trained on."""
    if self.vqvae is not None:
      runs.check_link(meta, self.vqvae, self.workdir)

  def checkpoint_meta(self) -> dict:
    return {"kind": "prior", "num_values": self.num_values,
            "grid_shape": list(self.sample_shape),
            "num_classes": self.num_classes if self.config.model.conditional
            else 0,
            "vqvae": runs.link_of(self.vqvae) if self.vqvae else None,
            "level": self.level}

  def _labels(self, batch):
    return batch["label"] if self.config.model.conditional else None

  def create_train_state(self, rng, batch) -> TrainState:
    x = jnp.asarray(batch["image"], jnp.int32)
    if self.conditioner is None:
      params = jax.jit(self.model.init)(rng, x, self._labels(batch))["params"]
    else:
      rng, cond_rng = jax.random.split(rng)
      cond_params = jax.jit(self.conditioner.init)(
          cond_rng, jnp.asarray(batch["cond"], jnp.int32))["params"]
      cond = self.conditioner.apply({"params": cond_params},
                                    jnp.asarray(batch["cond"], jnp.int32))
      params = {"pixelcnn": jax.jit(self.model.init)(
          rng, x, self._labels(batch), cond)["params"],
                "conditioner": cond_params}
    return TrainState.create(apply_fn=self.model.apply, params=params,
                             tx=make_optimizer(self.config))

  def _logits(self, params, x, batch, inference: bool) -> jax.Array:
    """`[B, h, w, C, V]`; a bottom prior reads the top codes `batch['cond']`
    through its conditioner (params `{"pixelcnn", "conditioner"}`).

    Training steps compute it with the kernels `config.model.kernels` picks
    (on XLA:CPU, Winograd convolutions: exactly causal only up to float32
    rounding); `inference` (the test NLL) with direct, exactly causal ones.
    """
    with kernels.scope(self.kernels, inference=inference):
      if self.conditioner is None:
        return self.model.apply({"params": params}, x, self._labels(batch))
      cond = self.conditioner.apply({"params": params["conditioner"]},
                                    jnp.asarray(batch["cond"], jnp.int32))
      return self.model.apply({"params": params["pixelcnn"]}, x,
                              self._labels(batch), cond)

  def _nll(self, params, batch, inference: bool = False) -> jax.Array:
    """Per-example NLL in nats, summed over positions and channels: [B]."""
    x = jnp.asarray(batch["image"], jnp.int32)
    logits = self._logits(params, x, batch, inference)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, x)
    return jnp.sum(nll, axis=(1, 2, 3))

  def train_step(self, state: TrainState, batch: dict):
    dims = math.prod(self.sample_shape)

    def loss_fn(params):
      return jnp.mean(self._nll(params, batch)) / dims

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    grads = lax.pmean(grads, AXIS)
    state = state.apply_gradients(grads=grads)
    loss = lax.pmean(loss, AXIS)
    return state, {"loss": loss, "bits": loss / math.log(2.0)}

  def eval_step(self, state: TrainState, batch: dict) -> dict:
    nll = self._nll(state.params, batch, inference=True)
    return lax.psum({"nll": jnp.sum(nll * batch["mask"]),
                     "count": jnp.sum(batch["mask"])}, AXIS)

  def summarize_eval(self, sums) -> dict[str, float]:
    nats = float(sums["nll"] / sums["count"]) / math.prod(self.sample_shape)
    return {"nll_nats": nats, "bits": nats / math.log(2.0),
            "uniform_bits": math.log2(self.num_values)}

  def write_images(self, state: TrainState, batches: dict, step: int,
                   workdir: str) -> list[str]:
    """Samples decoded to a grid. A VQ-VAE-2's top prior writes none (its
    codes need bottom codes to decode); a bottom prior's samples are drawn
    given, and decoded with, the top codes of the first test images."""
    n = self.config.eval.num_samples
    if not n or self.level == "top":
      return []
    params, cond, top = state.params, None, None
    if self.conditioner is not None:
      top = self.test_data.conditions[:n]
      n = len(top)
      params = state.params["pixelcnn"]
      cond = self.conditioner.apply({"params": state.params["conditioner"]},
                                    jnp.asarray(top, jnp.int32))
    labels = (jnp.arange(n, dtype=jnp.int32) % self.num_classes
              if self.config.model.conditional else None)
    samples = np.asarray(sampling.sample(
        self.model, {"params": params}, jax.random.PRNGKey(step),
        (n,) + self.sample_shape, self.config.sample.temperature, labels=labels,
        cond=cond, method=self.config.sample.method))
    if top is not None:
      pictures = np.asarray(self.vqvae.decode_levels(
          {"top": top, "bottom": samples[..., 0]}))
    else:
      pictures = runs.samples_to_images(samples, self.vqvae)
    return [images.save_grid(os.path.join(
        workdir, "images", f"samples_{step:06d}.png"), pictures)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage 2: trains a prior in `workdir`; returns the final test metrics."""
  return loop.train_and_evaluate(lambda: PriorTask(config, workdir), config,
                                 workdir)
