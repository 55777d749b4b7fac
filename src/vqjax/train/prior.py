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

from vqjax import data, images, runs, sampling
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


def encode_split(vqvae: TrainedVQVAE, dataset: data.Dataset,
                 batch_size: int = 1000) -> data.Dataset:
  """Images `[N, H, W, C]` -> a Dataset of codes `[N, h, w, 1]` (int16/32)."""
  check_image_shape(vqvae, dataset)
  dtype = np.int16 if vqvae.num_codes <= np.iinfo(np.int16).max else np.int32
  codes = np.empty((len(dataset),) + vqvae.code_shape + (1,), dtype)
  labels = np.empty((len(dataset),), np.int32)
  for start in range(0, len(codes), batch_size):
    chunk = dataset.batch(np.arange(start, min(start + batch_size, len(codes))))
    codes[start:start + len(chunk["image"]), ..., 0] = np.asarray(
        vqvae.encode(chunk["image"]))
    labels[start:start + len(chunk["label"])] = chunk["label"]
  return data.Dataset(name=f"{dataset.name}:codes", images=codes,
                      labels=labels, num_classes=dataset.num_classes)


def cached_codes(vqvae: TrainedVQVAE, dataset: data.Dataset, split: str,
                 workdir: str) -> data.Dataset:
  """`encode_split`, cached in `workdir` for this VQ-VAE run and step."""
  path = os.path.join(workdir, CODES_FILE.format(split=split))
  key = f"{vqvae.workdir}@{vqvae.step}"
  if os.path.exists(path):
    with np.load(path) as cached:
      if (str(cached["vqvae"]) == key and "labels" in cached and
          len(cached["codes"]) == len(dataset)):
        return data.Dataset(name=f"{dataset.name}:codes", images=cached["codes"],
                            labels=cached["labels"],
                            num_classes=dataset.num_classes)
  encoded = encode_split(vqvae, dataset)
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, codes=encoded.images, labels=encoded.labels, vqvae=key)
  os.replace(tmp, path)
  return encoded


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
        self.sample_shape = self.vqvae.code_shape + (1,)
        self.num_values = self.vqvae.num_codes
    labelled = self._images["train"] if self._images else self.train_data
    self.num_classes = labelled.num_classes
    if config.model.conditional and self.num_classes == 0:
      raise ConfigError(f"--config.model.conditional=True needs labels, but "
                        f"{config.data.name!r} has none.")
    self.model = build.pixelcnn(config, self.num_values,
                                self.sample_shape[-1], self.num_classes)
    self.has_initialize = False

  def _split(self, split: str) -> data.Dataset:
    if self.vqvae is None:
      return self._images[split]
    return cached_codes(self.vqvae, self._images[split], split, self.workdir)

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
            "vqvae": runs.link_of(self.vqvae) if self.vqvae else None}

  def _labels(self, batch):
    return batch["label"] if self.config.model.conditional else None

  def create_train_state(self, rng, batch) -> TrainState:
    x = jnp.asarray(batch["image"], jnp.int32)
    variables = jax.jit(self.model.init)(rng, x, self._labels(batch))
    return TrainState.create(apply_fn=self.model.apply,
                             params=variables["params"],
                             tx=make_optimizer(self.config))

  def _nll(self, params, batch) -> jax.Array:
    """Per-example NLL in nats, summed over positions and channels: [B]."""
    x = jnp.asarray(batch["image"], jnp.int32)
    logits = self.model.apply({"params": params}, x, self._labels(batch))
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
    nll = self._nll(state.params, batch)
    return lax.psum({"nll": jnp.sum(nll * batch["mask"]),
                     "count": jnp.sum(batch["mask"])}, AXIS)

  def summarize_eval(self, sums) -> dict[str, float]:
    nats = float(sums["nll"] / sums["count"]) / math.prod(self.sample_shape)
    return {"nll_nats": nats, "bits": nats / math.log(2.0),
            "uniform_bits": math.log2(self.num_values)}

  def write_images(self, state: TrainState, batches: dict, step: int,
                   workdir: str) -> list[str]:
    n = self.config.eval.num_samples
    if not n:
      return []
    labels = (jnp.arange(n, dtype=jnp.int32) % self.num_classes
              if self.config.model.conditional else None)
    samples = sampling.sample(
        self.model, {"params": state.params}, jax.random.PRNGKey(step),
        (n,) + self.sample_shape, self.config.sample.temperature, labels=labels,
        method=self.config.sample.method)
    pictures = runs.samples_to_images(np.asarray(samples), self.vqvae)
    return [images.save_grid(os.path.join(
        workdir, "images", f"samples_{step:06d}.png"), pictures)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage 2: trains a prior in `workdir`; returns the final test metrics."""
  return loop.train_and_evaluate(lambda: PriorTask(config, workdir), config,
                                 workdir)
