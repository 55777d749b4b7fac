"""Stage 2: a Gated PixelCNN prior over VQ-VAE codes, or over raw pixels.

With `config.vqvae_workdir` set, the stage-1 run is restored through Orbax,
the train and test splits are encoded to code grids once (cached in the
prior's workdir) and the PixelCNN learns p(codes). With it empty, the same
model learns p(pixels) with 256 values per channel.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from vqjax import checkpoint, data, images, sampling
from vqjax.configs import ConfigError
from vqjax.models.pixelcnn import GatedPixelCNN
from vqjax.parallel import AXIS
from vqjax.train import loop
from vqjax.train.state import TrainState, make_optimizer
from vqjax.train.vqvae import TrainedVQVAE, restore_vqvae

CODES_FILE = "codes_{split}.npz"


def make_model(config: ml_collections.ConfigDict, num_values: int,
               num_channels: int, num_classes: int) -> GatedPixelCNN:
  m = config.model
  return GatedPixelCNN(
      num_values=num_values, num_channels=num_channels, features=m.features,
      num_layers=m.num_layers, kernel_size=m.kernel_size,
      head_features=m.head_features,
      num_classes=num_classes if m.conditional else 0)


def encode_split(vqvae: TrainedVQVAE, dataset: data.Dataset,
                 batch_size: int = 1000) -> data.Dataset:
  """Images `[N, H, W, C]` -> a Dataset of codes `[N, h, w, 1]` (int16/32)."""
  if tuple(dataset.shape) != tuple(vqvae.image_shape):
    raise ConfigError(
        f"The prior's data {dataset.name!r} has images of shape "
        f"{dataset.shape} but the VQ-VAE in {vqvae.workdir} was trained on "
        f"{vqvae.image_shape}; use the same --config.data as stage 1.")
  dtype = np.int16 if vqvae.num_codes <= np.iinfo(np.int16).max else np.int32
  codes = np.empty((len(dataset.images),) + vqvae.grid_shape + (1,), dtype)
  for start in range(0, len(codes), batch_size):
    chunk = dataset.images[start:start + batch_size]
    codes[start:start + len(chunk), ..., 0] = np.asarray(vqvae.encode(chunk))
  return data.Dataset(name=f"{dataset.name}:codes", images=codes,
                      labels=dataset.labels, num_classes=dataset.num_classes)


def cached_codes(vqvae: TrainedVQVAE, dataset: data.Dataset, split: str,
                 workdir: str) -> data.Dataset:
  """`encode_split`, cached in `workdir` for this VQ-VAE run and step."""
  path = os.path.join(workdir, CODES_FILE.format(split=split))
  key = f"{vqvae.workdir}@{vqvae.step}"
  if os.path.exists(path):
    with np.load(path) as cached:
      if str(cached["vqvae"]) == key and len(cached["codes"]) == len(dataset.images):
        return data.Dataset(name=f"{dataset.name}:codes", images=cached["codes"],
                            labels=dataset.labels,
                            num_classes=dataset.num_classes)
  encoded = encode_split(vqvae, dataset)
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, codes=encoded.images, vqvae=key)
  os.replace(tmp, path)
  return encoded


def link_of(vqvae: TrainedVQVAE) -> dict:
  """What a prior's checkpoint records about its stage-1 run."""
  return {"workdir": vqvae.workdir, "step": vqvae.step,
          "config": checkpoint.config_to_dict(vqvae.config)}


def check_link(meta: dict, vqvae: TrainedVQVAE, prior_workdir: str) -> None:
  """Raises unless `vqvae` produces the codes the prior was trained on."""
  expected = (meta["num_values"], tuple(meta["grid_shape"][:2]))
  found = (vqvae.num_codes, tuple(vqvae.grid_shape))
  if expected != found:
    raise checkpoint.CheckpointError(
        f"The prior in {prior_workdir!r} was trained on codes with K="
        f"{expected[0]} on a {expected[1][0]}x{expected[1][1]} grid, but the "
        f"VQ-VAE in {vqvae.workdir!r} has K={found[0]} on a "
        f"{found[1][0]}x{found[1][1]} grid; point it at the stage-1 run it "
        f"was trained on ({meta['vqvae']['workdir']!r}).")


class PriorTask:
  """Trains a GatedPixelCNN by maximum likelihood (cross-entropy in nats)."""
  progress_keys = ("loss", "bits")

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               datasets: tuple[data.Dataset, data.Dataset, int] | None = None):
    """Loads the data `config` names (encoding it with the linked VQ-VAE), or
    takes `datasets = (train, test, num_values)` as given (benchmarks)."""
    self.config = config
    self.workdir = workdir
    self.vqvae: TrainedVQVAE | None = None
    if datasets is not None:
      self.train_data, self.test_data, self.num_values = datasets
    elif config.vqvae_workdir:
      self.vqvae = restore_vqvae(config.vqvae_workdir)
      self._check_resumed_link()
      self.train_data = cached_codes(self.vqvae, data.load(config.data, "train"),
                                     "train", workdir)
      self.test_data = cached_codes(self.vqvae, data.load(config.data, "test"),
                                    "test", workdir)
      self.num_values = self.vqvae.num_codes
    else:
      self.train_data = data.load(config.data, "train")
      self.test_data = data.load(config.data, "test")
      self.num_values = 256
    self.grid_shape = tuple(self.train_data.shape)  # (h, w, C)
    self.num_classes = self.train_data.num_classes
    if config.model.conditional and self.num_classes == 0:
      raise ConfigError(f"--config.model.conditional=True needs labels, but "
                        f"{config.data.name!r} has none.")
    self.model = make_model(config, self.num_values, self.grid_shape[-1],
                            self.num_classes)
    self.has_initialize = False

  def _check_resumed_link(self) -> None:
    ckpt = checkpoint.Checkpointer(self.workdir)
    if ckpt.latest_step() is None:
      return
    meta, _ = ckpt.restore_meta()
    check_link(meta, self.vqvae, self.workdir)

  def checkpoint_meta(self) -> dict:
    return {"kind": "prior", "num_values": self.num_values,
            "grid_shape": list(self.grid_shape),
            "num_classes": self.num_classes if self.config.model.conditional
            else 0,
            "vqvae": link_of(self.vqvae) if self.vqvae else None}

  def _labels(self, batch):
    return batch["label"] if self.config.model.conditional else None

  def create_train_state(self, rng, batch) -> TrainState:
    x = jnp.asarray(batch["image"], jnp.int32)
    variables = self.model.init(rng, x, self._labels(batch))
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
    dims = math.prod(self.grid_shape)

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
    nats = float(sums["nll"] / sums["count"]) / math.prod(self.grid_shape)
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
        (n,) + self.grid_shape, self.config.sample.temperature, labels=labels,
        method=self.config.sample.method)
    pictures = to_images(np.asarray(samples), self.vqvae)
    return [images.save_grid(os.path.join(
        workdir, "images", f"samples_{step:06d}.png"), pictures)]


def to_images(samples: np.ndarray, vqvae: TrainedVQVAE | None) -> np.ndarray:
  """Prior samples `[B, h, w, C]` -> uint8 images (decoded when they are codes)."""
  if vqvae is None:
    return samples.astype(np.uint8)
  return np.asarray(vqvae.decode(samples[..., 0]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage 2: trains a prior in `workdir`; returns the final test metrics."""
  return loop.train_and_evaluate(PriorTask(config, workdir), workdir)


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

  @property
  def grid_shape(self) -> tuple[int, int, int]:
    return tuple(self.meta["grid_shape"])

  @property
  def num_classes(self) -> int:
    return int(self.meta.get("num_classes") or 0)


def restore_prior(workdir: str, vqvae_workdir: str | None = None,
                  step: int | None = None) -> TrainedPrior:
  """Loads a stage-2 run and the VQ-VAE its checkpoint links to (or
  `vqvae_workdir`, which must then produce the same kind of codes)."""
  config = checkpoint.read_config(workdir)
  ckpt = checkpoint.Checkpointer(workdir, create=False)
  meta, step = ckpt.restore_meta(step)
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
  grid_shape = tuple(meta["grid_shape"])
  model = make_model(config, meta["num_values"], grid_shape[-1],
                     meta.get("num_classes") or 0)
  labels = jnp.zeros((1,), jnp.int32) if config.model.conditional else None
  params = model.init(jax.random.PRNGKey(0),
                      jnp.zeros((1,) + grid_shape, jnp.int32), labels)["params"]
  target = TrainState.create(apply_fn=model.apply, params=params,
                             tx=make_optimizer(config))
  state, _, step = ckpt.restore(target, step)
  ckpt.close()
  return TrainedPrior(workdir=os.path.abspath(workdir), step=int(step),
                      config=config, model=model,
                      variables={"params": state.params}, meta=meta,
                      vqvae=vqvae)
