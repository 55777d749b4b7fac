"""Stage 2: a Gated PixelCNN prior over VQ-VAE codes, or over raw pixels.

With `config.vqvae_workdir` set, the stage-1 run is restored through Orbax,
the train and test splits are encoded to code grids once (cached in the
prior's workdir) and the PixelCNN learns p(codes). With it empty, the same
model learns p(pixels) with 256 values per channel.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from vqjax import clusters, data, images, runs, sampling
from vqjax.configs import ConfigError
from vqjax.models import build
from vqjax.models.code_prior import CodePrior
from vqjax.parallel import AXIS
from vqjax.runs import TrainedStage1
from vqjax.train import loop
from vqjax.train.state import PriorTrainState, jit_init, make_optimizer

CODES_FILE = "codes_{split}.npz"


def check_image_shape(vqvae: TrainedStage1, dataset: data.Dataset) -> None:
  """Raises unless `vqvae` was trained on images of the dataset's shape."""
  if tuple(dataset.shape) != tuple(vqvae.image_shape):
    raise ConfigError(
        f"The prior's data {dataset.name!r} has images of shape "
        f"{dataset.shape} but the VQ-VAE in {vqvae.workdir} was trained on "
        f"{vqvae.image_shape}; use the same --config.data as stage 1.")


def encode_split(vqvae: TrainedStage1, dataset: data.Dataset, level: str,
                 batch_size: int = 1000) -> data.Dataset:
  """Images `[N, H, W, C]` -> a Dataset of `level`'s codes `[N, h, w, C_codes]`
  (int16/32; C_codes residual depths or groups, else 1); for a VQ-VAE-2's
  bottom level its `conditions` are the top codes `[N, h_t, w_t, C_codes]`."""
  check_image_shape(vqvae, dataset)
  dtype = np.int16 if vqvae.num_codes <= np.iinfo(np.int16).max else np.int32
  shapes, channels = vqvae.code_shapes, (vqvae.code_channels,)
  codes = np.empty((len(dataset),) + shapes[level] + channels, dtype)
  top = (np.empty((len(dataset),) + shapes["top"] + channels, dtype)
         if level == "bottom" else None)
  labels = np.empty((len(dataset),), np.int32)
  for start in range(0, len(codes), batch_size):
    chunk = dataset.batch(np.arange(start, min(start + batch_size, len(codes))))
    end = start + len(chunk["image"])
    encoded = vqvae.encode_levels(chunk["image"])
    codes[start:end] = np.asarray(encoded[level])
    if top is not None:
      top[start:end] = np.asarray(encoded["top"])
    labels[start:end] = chunk["label"]
  return data.Dataset(name=f"{dataset.name}:codes", images=codes,
                      labels=labels, num_classes=dataset.num_classes,
                      conditions=top)


def cached_codes(vqvae: TrainedStage1, dataset: data.Dataset, split: str,
                 workdir: str, level: str) -> data.Dataset:
  """`encode_split`, cached in `workdir` for this VQ-VAE run, step and level."""
  path = os.path.join(workdir, CODES_FILE.format(split=split))
  key = f"{vqvae.workdir}@{vqvae.step}:{level}"
  if os.path.exists(path):
    with np.load(path) as cached:
      if (str(cached["vqvae"]) == key and "labels" in cached and
          len(cached["codes"]) == len(dataset) and
          cached["codes"].shape[-1] == vqvae.code_channels and
          ("top" not in cached or cached["top"].ndim == 4)):
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


def resolve_level(level: str, vqvae: TrainedStage1) -> str:
  """`config.level`, checked against the stage-1 run's code grids."""
  if not vqvae.levels:
    raise ConfigError(f"The run in {vqvae.workdir} is an AE/VAE (no codes); "
                      "point --config.vqvae_workdir at a VQ-VAE run.")
  if level not in vqvae.levels:
    choices = " or ".join(f"--config.level={l}" for l in vqvae.levels)
    raise ConfigError(
        f"--config.level={level!r} does not name a code grid of the stage-1 "
        f"run in {vqvae.workdir}; set {choices}.")
  return level


def check_num_clusters(config: ml_collections.ConfigDict,
                       level: str | None) -> int:
  """`config.model.num_clusters`, checked against the rest of the config."""
  num = config.model.num_clusters
  if isinstance(num, bool) or int(num) != num or num < 0 or num == 1:
    raise ConfigError(f"--config.model.num_clusters={num!r} must be 0 (off) "
                      "or an int >= 2.")
  if num and config.model.conditional:
    raise ConfigError("--config.model.num_clusters conditions the prior on "
                      "clusters instead of labels; set it to 0 or "
                      "--config.model.conditional=False.")
  if num and level == "bottom":
    raise ConfigError("A bottom-level prior is conditioned on the top codes; "
                      "set --config.model.num_clusters=0 (clusters belong in "
                      "the top-level prior).")
  return int(num)


def check_label_dropout(config: ml_collections.ConfigDict) -> float:
  """`config.model.label_dropout`, checked: a probability, for a prior that
  has a label (classes or clusters) to drop."""
  p = config.model.label_dropout
  if not 0.0 <= p < 1.0:
    raise ConfigError(f"--config.model.label_dropout={p} must be in [0, 1) "
                      "(0: off).")
  if p and not (config.model.conditional or config.model.num_clusters):
    raise ConfigError("--config.model.label_dropout drops the class or cluster "
                      "the prior is conditioned on; set "
                      "--config.model.num_clusters or "
                      "--config.model.conditional=True, or leave it at 0.")
  return float(p)


class PriorTask:
  """Trains a `CodePrior` by maximum likelihood (cross-entropy in nats).

  With `model.num_clusters = C` it learns p(codes | c) for the k-means
  cluster c of each code grid (`vqjax.clusters`), and its test NLL adds
  -log p(c). With `train.ema_decay > 0` the state keeps an exponential
  moving average of the parameters (`PriorTrainState`), which evaluation,
  the pictures and `runs.restore_prior` use. With `model.dropout > 0` each training example
  draws its dropout masks from a key folded from the seed, the step and its
  index in the global batch, so a resumed run and a run on any number of
  devices draw the same masks. With `model.label_dropout = p` each training
  example's class (or cluster) is replaced, with probability p drawn the same
  way, by the model's extra "no label" class (`build.null_label`), so the
  one network also learns the unconditional prior that classifier-free
  guidance needs; the test NLL stays conditional.
  """
  progress_keys = ("loss", "bits")

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               datasets: tuple[data.Dataset, data.Dataset, int] | None = None):
    """Restores the linked stage-1 run and loads the images `config` names
    (their codes are encoded on first use of `train_data` / `test_data`), or
    takes `datasets = (train, test, num_values)` as given (benchmarks)."""
    self.config = config
    self.workdir = workdir
    self.vqvae: TrainedStage1 | None = None
    self.level: str | None = None  # None: raw pixels
    top_num_codes = top_upsamples = 0
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
        self.vqvae = runs.restore_stage1(config.vqvae_workdir)
        check_image_shape(self.vqvae, self._images["train"])
        self.level = resolve_level(config.level, self.vqvae)
        self.sample_shape = (self.vqvae.code_shapes[self.level]
                             + (self.vqvae.code_channels,))
        self.num_values = self.vqvae.num_codes
        if self.level == "bottom":
          top_num_codes = self.vqvae.num_codes
          top_upsamples = self.vqvae.config.model.top_downsamples
      elif config.level in ("top", "bottom"):
        raise ConfigError("--config.level=top|bottom needs "
                          "--config.vqvae_workdir (a VQ-VAE-2 run); leave "
                          "both unset for raw pixels.")
    labelled = self._images["train"] if self._images else self.train_data
    self.num_clusters = check_num_clusters(config, self.level)
    self.num_classes = self.num_clusters or labelled.num_classes
    self.label_dropout = check_label_dropout(config)
    self.null_label = build.null_label(config, self.num_classes)
    if config.sample.guidance and self.null_label is None:
      raise ConfigError(f"--config.sample.guidance={config.sample.guidance} "
                        "needs --config.model.label_dropout > 0 (and a class "
                        "or cluster to drop); set it to 0.")
    if config.model.conditional and self.num_classes == 0:
      raise ConfigError(f"--config.model.conditional=True needs labels, but "
                        f"{config.data.name!r} has none.")
    prior = functools.partial(
        build.code_prior, config, self.num_values, self.sample_shape[-1],
        self.num_classes, top_num_codes, top_upsamples)
    self.model: CodePrior = prior()
    self.eval_model: CodePrior = prior(inference=True)
    self.has_initialize = False
    if not 0.0 <= config.train.ema_decay < 1.0:
      raise ConfigError(f"--config.train.ema_decay={config.train.ema_decay} "
                        "must be in [0, 1) (0: no moving average).")
    self._dropout_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    self._label_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)

  def _unclustered(self, split: str) -> data.Dataset:
    if self.vqvae is None:
      return self._images[split]
    return cached_codes(self.vqvae, self._images[split], split, self.workdir,
                        self.level)

  def _split(self, split: str) -> data.Dataset:
    dataset = self._unclustered(split)
    if not self.num_clusters:
      return dataset
    return dataclasses.replace(dataset, labels=self.clusters.labels[split],
                               num_classes=self.num_clusters)

  @functools.cached_property
  def clusters(self) -> clusters.Clusters | None:
    """With `model.num_clusters`: the k-means clusters the prior is
    conditioned on, fitted on the training split's codes (or pixels). None
    for datasets given to the constructor, whose labels are taken as the
    clusters."""
    if not self.num_clusters or not self._images:
      return None

    def features():
      splits = {s: self._unclustered(s).images for s in ("train", "test")}
      if self.vqvae is None:
        return {s: clusters.pixel_features(x) for s, x in splits.items()}
      tables = self.vqvae.code_tables(self.level)
      return {s: clusters.code_features(tables, x) for s, x in splits.items()}

    data_config = self.config.data
    source = (f"{self.vqvae.workdir}@{self.vqvae.step}:{self.level}"
              if self.vqvae else
              f"{data_config.name}:{data_config.dir}:{data_config.image_size}")
    return clusters.cached_fit(self.workdir, source,
                               features, self.num_clusters, self.config.seed)

  @functools.cached_property
  def train_data(self) -> data.Dataset:
    """The training split: images, or their codes under the linked VQ-VAE."""
    return self._split("train")

  @functools.cached_property
  def test_data(self) -> data.Dataset:
    return self._split("test")

  def check_resume(self, meta: dict) -> None:
    """A resumed code prior must see the codes it was trained on, and keep
    (or not keep) a moving average as it did."""
    if self.vqvae is not None:
      runs.check_link(meta, self.vqvae, self.workdir)
    saved = bool(meta.get("ema"))
    if saved != bool(self.config.train.ema_decay):
      raise ConfigError(
          f"The prior in {self.workdir} was trained "
          f"{'with' if saved else 'without'} a moving average of its "
          f"parameters; resume it with --config.train.ema_decay "
          f"{'> 0' if saved else '= 0'}, or use a new --workdir.")

  def checkpoint_meta(self) -> dict:
    return {"kind": "prior", "num_values": self.num_values,
            "grid_shape": list(self.sample_shape),
            "num_classes": self.model.num_classes - (self.null_label
                                                     is not None),
            "null_label": self.null_label,
            "num_clusters": self.num_clusters,
            "cluster_counts": (self.clusters.counts.tolist() if self.clusters
                               else None),
            "vqvae": runs.link_of(self.vqvae) if self.vqvae else None,
            "level": self.level, "ema": bool(self.config.train.ema_decay)}

  def _inputs(self, batch) -> tuple:
    """`(x, labels, top_codes)` of a batch for `CodePrior.__call__`."""
    labels = batch["label"] if self.model.num_classes else None
    top_codes = batch["cond"] if self.model.top_num_codes else None
    return jnp.asarray(batch["image"], jnp.int32), labels, top_codes

  def create_train_state(self, rng, batch) -> PriorTrainState:
    params = jit_init(self.model.init, rng,
                      *self._inputs(batch))["params"]
    return PriorTrainState.create(
        apply_fn=self.model.apply, params=params,
        tx=make_optimizer(self.config),
        ema_params=params if self.config.train.ema_decay else None)

  def _nll(self, model: CodePrior, params, batch,
           step: jax.Array | None = None) -> jax.Array:
    """Per-example NLL in nats, summed over positions and channels: [B].
    With `step`, in training mode: example n of the global batch draws its
    dropout masks (`pixelcnn.ExampleDropout`) and whether its label is
    dropped from keys folded from the step and n."""
    x, labels, top_codes = self._inputs(batch)
    if step is None or not (self.label_dropout or self.config.model.dropout):
      return self._sum_nll(model.apply({"params": params}, x, labels,
                                       top_codes), x)
    ids = lax.axis_index(AXIS) * x.shape[0] + jnp.arange(x.shape[0])
    if self.label_dropout:
      rng = jax.random.fold_in(self._label_rng, step)
      drop = jax.vmap(lambda i: jax.random.bernoulli(
          jax.random.fold_in(rng, i), self.label_dropout))(ids)
      labels = jnp.where(drop, self.null_label, labels)
    dropout = {} if not self.config.model.dropout else dict(
        train=True, example_ids=ids,
        rngs={"dropout": jax.random.fold_in(self._dropout_rng, step)})
    return self._sum_nll(model.apply({"params": params}, x, labels, top_codes,
                                     **dropout), x)

  @staticmethod
  def _sum_nll(logits, x):
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, x)
    return jnp.sum(nll, axis=(1, 2, 3))

  def train_step(self, state: PriorTrainState, batch: dict):
    dims = math.prod(self.sample_shape)

    def loss_fn(params):
      return jnp.mean(self._nll(self.model, params, batch, state.step)) / dims

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    grads = lax.pmean(grads, AXIS)
    state = state.apply_gradients(grads=grads)
    if state.ema_params is not None:
      state = state.update_ema(self.config.train.ema_decay)
    loss = lax.pmean(loss, AXIS)
    return state, {"loss": loss, "bits": loss / math.log(2.0)}

  def eval_step(self, state: PriorTrainState, batch: dict) -> dict:
    """Sums of the test NLL of the parameters the run samples with (the
    average, if kept) and, with an average, of the last parameters."""
    # The inference model: direct convolutions, exactly causal.
    mask = batch["mask"]
    # A cluster-conditioned prior also pays for its cluster, log p(c).
    cluster_nll = (-jnp.asarray(clusters.log_probs(self.clusters.counts))[
        batch["label"]] if self.clusters else jnp.zeros(mask.shape))
    nll = self._nll(self.eval_model, state.eval_params(), batch) + cluster_nll
    sums = {"nll": jnp.sum(nll * mask), "count": jnp.sum(mask),
            "cluster_nll": jnp.sum(cluster_nll * mask)}
    if state.ema_params is not None:
      sums["nll_last"] = jnp.sum(
          (self._nll(self.eval_model, state.params, batch) + cluster_nll)
          * mask)
    return lax.psum(sums, AXIS)

  def summarize_eval(self, sums) -> dict[str, float]:
    per_code = lambda total: (float(total / sums["count"])
                              / math.prod(self.sample_shape))
    nats = per_code(sums["nll"])
    metrics = {"nll_nats": nats, "bits": nats / math.log(2.0),
               "uniform_bits": math.log2(self.num_values)}
    if self.num_clusters:  # the part of `bits` spent on the cluster
      metrics["cluster_bits"] = per_code(sums["cluster_nll"]) / math.log(2.0)
    if "nll_last" in sums:  # the parameters before averaging
      metrics["bits_without_ema"] = per_code(sums["nll_last"]) / math.log(2.0)
    return metrics

  def write_images(self, state: PriorTrainState, batches: dict, step: int,
                   workdir: str) -> list[str]:
    """Samples decoded to a grid. A VQ-VAE-2's top prior writes none (its
    codes need bottom codes to decode); a bottom prior's samples are drawn
    given, and decoded with, the top codes of the first test images."""
    n = self.config.eval.num_samples
    if not n or self.level == "top":
      return []
    top = None
    if self.level == "bottom":
      top = self.test_data.conditions[:n]
      n = len(top)
    key = jax.random.PRNGKey(step)
    labels = None
    if self.clusters:
      key, k_labels = jax.random.split(key)
      labels = clusters.draw(k_labels, self.clusters.counts, n)
    elif self.config.model.conditional:
      labels = jnp.arange(n, dtype=jnp.int32) % self.num_classes
    samples = np.asarray(sampling.sample(
        self.eval_model, {"params": state.eval_params()}, key,
        (n,) + self.sample_shape, self.config.sample.temperature,
        labels=labels, top_codes=top, method=self.config.sample.method,
        guidance=self.config.sample.guidance, null_label=self.null_label))
    if top is not None:
      pictures = np.asarray(self.vqvae.decode_levels(
          {"top": top, "bottom": samples}))
    else:
      pictures = runs.samples_to_images(samples, self.vqvae)
    return [images.save_grid(os.path.join(
        workdir, "images", f"samples_{step:06d}.png"), pictures)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage 2: trains a prior in `workdir`; returns the final test metrics."""
  return loop.train_and_evaluate(lambda: PriorTask(config, workdir), config,
                                 workdir)
