"""Stage 1: what the training loop needs to train a VQ-VAE, a VQ-VAE-2, or
their AE / VAE baselines."""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from vqjax import configs, data, images, likelihood, quantizer
from vqjax.configs import ConfigError
from vqjax.models import build
from vqjax.models.autoencoder import SAMPLE_RNG, Autoencoder
from vqjax.models.vector_quantizer import (DROPOUT_RNG, EMA_COLLECTION,
                                           RESTART_RNG)
from vqjax.models.vqvae import VQVAE, to_float, to_uint8
from vqjax.parallel import AXIS
from vqjax.train import loop
from vqjax.train.state import Stage1TrainState, jit_init, make_optimizer


def split_variables(variables) -> tuple[dict, dict]:
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def clip_to_pixels(images: jax.Array) -> jax.Array:
  """Reconstructions clipped to the pixel range [-0.5, 0.5]."""
  return jnp.clip(images, -0.5, 0.5)


VARIANCE_DECAY = 0.99


def channel_counts(codes: jax.Array, num_codes: int,
                   weights: jax.Array) -> jax.Array:
  """Uses of each code per code channel: `codes [B, h, w, C]` int,
  `weights [B, h, w]` -> `[C, K]` float32."""
  return jax.vmap(lambda c: quantizer.code_counts(c, num_codes,
                                                  weights=weights),
                  in_axes=-1)(codes)


def level_key(name: str, level: str, levels: tuple[str, ...]) -> str:
  """Metric name of one of `levels`: 'perplexity' for a one-level model,
  'perplexity_top' for a VQ-VAE-2's top level."""
  return f"{name}_{level}" if len(levels) > 1 else name


class Stage1Task:
  """Trains a stage-1 model (`config.model.bottleneck`): a VQ-VAE or VQ-VAE-2
  (loss = MSE / Var(train data) + quantizer losses), an autoencoder (MSE /
  Var only) or a Gaussian VAE (negative ELBO per dimension).

  Every model is scored by the same discrete likelihood
  (`vqjax.likelihood`): a Gaussian over the 256 values of each pixel around
  the reconstruction, whose per-channel variance is an exponential moving
  average of the training batches' squared errors (`decoder_variance`).
  The VAE's training loss uses that likelihood with the batch's own variance.

  Code usage (`perplexity`, `codes_used`) is per codebook: with C > 1 code
  channels (residual depths, groups) it is the mean over the channels of each
  channel's figure over its K codes.
  """
  progress_keys = ("loss", "nmse", "perplexity", "perplexity_bottom",
                   "bits_per_dim")

  def __init__(self, config: ml_collections.ConfigDict):
    q = config.quantizer
    bottleneck = config.model.bottleneck
    vq_kind = bottleneck == "vq" and q.kind == "vq"
    if vq_kind and q.dead_code_threshold > 0 and not q.use_ema:
      raise ConfigError("quantizer.dead_code_threshold > 0 needs the EMA "
                       "codebook; set --config.quantizer.use_ema=True or "
                       "--config.quantizer.dead_code_threshold=0.")
    if q.kmeans_init and (not vq_kind or config.model.top_downsamples):
      raise ConfigError("quantizer.kmeans_init works for the one-level VQ-VAE "
                        "with a codebook (quantizer.kind=vq) only; set "
                        "--config.quantizer.kmeans_init=False.")
    self.config = config
    self.train_data = data.load(config.data, "train")
    self.test_data = data.load(config.data, "test")
    configs.check_image_fits(config, self.train_data.shape)
    self.data_variance = float(data.data_variance(self.train_data))
    channels = self.train_data.shape[-1]
    self.model = build.stage1(config, channels, axis_name=AXIS)
    self.eval_model = build.stage1(config, channels, axis_name=AXIS,
                                   inference=True)
    self.host_model = build.stage1(config, channels, inference=True)
    self.variational = bottleneck == "vae"
    self.levels = self.model.levels
    self.codebook_size = self.model.codebook_size if self.levels else 0
    self.has_initialize = q.kmeans_init
    self._rng, self._kmeans_rng = jax.random.split(
        jax.random.PRNGKey(config.seed), 2)
    self.num_dims = math.prod(self.train_data.shape)

  def checkpoint_meta(self) -> dict:
    return {"kind": "stage1", "image_shape": list(self.train_data.shape),
            "data_variance": self.data_variance,
            "bottleneck": self.config.model.bottleneck,
            "levels": list(self.levels)}

  def check_resume(self, meta: dict) -> None:
    del meta  # A stage-1 run depends on no other run.

  def _rngs(self, step) -> dict:
    rng = jax.random.fold_in(self._rng, step)
    return {RESTART_RNG: rng, SAMPLE_RNG: jax.random.fold_in(rng, 1),
            DROPOUT_RNG: jax.random.fold_in(rng, 2)}

  def init_variables(self, rng, x: jax.Array) -> dict:
    """The model's initial variables for float images `x [B, H, W, C]`."""
    return jit_init(self.host_model.init,
                    {"params": rng, SAMPLE_RNG: rng}, x)

  def create_train_state(self, rng, batch) -> Stage1TrainState:
    x = to_float(jnp.asarray(batch["image"]))
    params, model_state = split_variables(self.init_variables(rng, x))
    channels = x.shape[-1]
    return Stage1TrainState.create(
        apply_fn=self.model.apply, params=params,
        tx=make_optimizer(self.config), model_state=model_state,
        decoder_variance=jnp.full((channels,), self.data_variance,
                                  jnp.float32))

  def _losses(self, out: dict, x: jax.Array) -> dict:
    """The training loss and what is logged of it. `mse` and `nmse` are
    measured on the picture (the reconstruction clipped to the pixel range),
    and so is the likelihood's variance: a decoder may push a black or white
    pixel's mean beyond the range, where the end bin only grows likelier."""
    mse = jnp.mean(jnp.square(out["reconstruction"] - x))
    squared = jnp.square(clip_to_pixels(out["reconstruction"]) - x)
    losses = {"mse": jnp.mean(squared),
              "nmse": jnp.mean(squared) / self.data_variance,
              "channel_mse": jnp.mean(squared, axis=(0, 1, 2))}
    if self.variational:
      # Negative ELBO per dimension, in nats: the decoder's variance is the
      # batch's own squared error (calibrated decoder), so the KL is weighed
      # against a likelihood that is sharp as the reconstructions get good.
      variance = lax.stop_gradient(
          lax.pmean(losses["channel_mse"], AXIS))
      log_p = likelihood.discretized_gaussian_log_prob(
          x, out["reconstruction"], variance)
      kl = jnp.mean(out["kl"]) / self.num_dims
      losses.update(loss=kl - jnp.mean(log_p), kl_per_dim=kl)
      return losses
    losses["loss"] = mse / self.data_variance + out["loss"]
    for level, q in out["levels"].items():
      for name in ("codebook_loss", "commitment_loss", "sample_entropy",
                   "codebook_entropy"):  # The last two: LFQ's.
        if name in q:
          losses[self._key(name, level)] = q[name]
    return losses

  def _key(self, name: str, level: str) -> str:
    return level_key(name, level, self.levels)

  def train_step(self, state: Stage1TrainState, batch: dict):
    """One optimisation step on one device's shard of the global batch."""
    x = to_float(batch["image"])
    mutable = list(state.model_state)

    def loss_fn(params):
      out, new_model_state = self.model.apply(
          {"params": params, **state.model_state}, x, train=True,
          mutable=mutable, rngs=self._rngs(state.step))
      losses = self._losses(out, x)
      return losses["loss"], (losses, out, new_model_state)

    grads, (losses, out, new_model_state) = jax.grad(
        loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS)
    channel_mse = lax.pmean(losses.pop("channel_mse"), AXIS)
    variance = (VARIANCE_DECAY * state.decoder_variance
                + (1 - VARIANCE_DECAY) * channel_mse)
    state = state.apply_gradients(grads=grads,
                                  model_state=dict(new_model_state),
                                  decoder_variance=variance)
    metrics = lax.pmean(losses, AXIS)
    for level, q in out["levels"].items():
      counts = q["counts"]  # [K] or [C, K], over the global batch.
      metrics[self._key("perplexity", level)] = jnp.mean(
          quantizer.perplexity(counts))
      metrics[self._key("codes_used", level)] = jnp.mean(
          quantizer.fraction_used(counts))
      if "restarted" in q:
        metrics[self._key("codes_restarted", level)] = q["restarted"]
    return state, metrics

  def eval_step(self, state: Stage1TrainState, batch: dict) -> dict:
    """Sums over the global batch (padding masked out)."""
    x = to_float(batch["image"])
    mask = batch["mask"]
    out = self.eval_model.apply(state.variables(), x, train=False,
                                rngs={SAMPLE_RNG: jax.random.PRNGKey(0)})
    per_image = jnp.sum(jnp.square(clip_to_pixels(out["reconstruction"]) - x),
                        axis=(1, 2, 3))
    log_p = likelihood.discretized_gaussian_log_prob(
        x, out["reconstruction"], state.decoder_variance)
    sums = {
        "squared_error": jnp.sum(per_image * mask),
        "num_values": jnp.sum(mask) * np.prod(x.shape[1:]),
        "num_images": jnp.sum(mask),
        "reconstruction_nats": -jnp.sum(mask * jnp.sum(log_p, (1, 2, 3))),
    }
    if self.variational:
      sums["kl_nats"] = jnp.sum(mask * out["kl"])
    for level, q in out["levels"].items():
      codes = q["indices"].reshape(q["z_e"].shape[:-1] + (-1,))
      code_mask = jnp.broadcast_to(mask[:, None, None], codes.shape[:-1])
      # The decoder's input against the encoder's output (with a projection,
      # FSQ or LFQ, not the trained commitment term of the lookup space).
      sums[self._key("commitment", level)] = jnp.sum(mask * jnp.mean(
          jnp.square(q["z_e"] - lax.stop_gradient(q["quantized"])),
          axis=(1, 2, 3)))
      sums[self._key("counts", level)] = channel_counts(
          codes, self.codebook_size, code_mask)
      sums[self._key("num_codes", level)] = (
          jnp.sum(mask) * math.prod(codes.shape[1:]))
    return lax.psum(sums, AXIS)

  def summarize_eval(self, sums) -> dict[str, float]:
    """Test metrics; `bits_per_dim` bounds -log2 p(x) per pixel value with
    the decoder likelihood plus the code cost: log2 K per code (uniform prior
    over codes; a trained prior lowers it, see `evaluate.py`), the KL for the
    VAE, nothing for the AE (whose figure is then reconstruction only)."""
    n = float(sums["num_images"])
    mse = float(sums["squared_error"] / sums["num_values"])
    reconstruction = float(sums["reconstruction_nats"]) / n
    code_nats = 0.0
    metrics = {"mse": mse, "nmse": mse / self.data_variance}
    if self.variational:
      code_nats = float(sums["kl_nats"]) / n
      metrics["kl_bits_per_dim"] = likelihood.bits_per_dim(code_nats,
                                                           self.num_dims)
    for level in self.levels:
      per_image = float(sums[self._key("num_codes", level)]) / n
      code_nats += per_image * math.log(self.codebook_size)
      counts = sums[self._key("counts", level)]  # [C, K]
      metrics[self._key("commitment_loss", level)] = float(
          self.config.quantizer.beta * sums[self._key("commitment", level)] / n)
      metrics[self._key("perplexity", level)] = float(
          np.mean(quantizer.perplexity(counts)))
      metrics[self._key("codes_used", level)] = float(
          np.mean(quantizer.fraction_used(counts)))
    metrics["reconstruction_bits_per_dim"] = likelihood.bits_per_dim(
        reconstruction, self.num_dims)
    metrics["bits_per_dim"] = likelihood.bits_per_dim(
        reconstruction + code_nats, self.num_dims)
    return metrics

  def initialize(self, state: Stage1TrainState, batch: dict
                 ) -> Stage1TrainState:
    """k-means codebook from the first global batch (identical on devices):
    `VectorQuantizer.kmeans_codebook` (per group, per residual depth, in
    the lookup space, spherical for a cosine codebook)."""
    cfg = self.config.quantizer
    z_e = self.eval_model.apply(state.variables(), to_float(batch["image"]),
                                method=VQVAE.encode)
    centres = self.eval_model.apply(
        state.variables(), z_e, self._kmeans_rng, cfg.kmeans_iters,
        method=lambda model, *args: model.quantizer.kmeans_codebook(*args))
    if cfg.use_ema:
      _, ema = self.eval_model.apply(state.variables(), centres,
                                     method=VQVAE.set_codebook,
                                     mutable=[EMA_COLLECTION])
      return state.replace(model_state={**state.model_state, **ema})
    params = jax.tree_util.tree_map(lambda x: x, state.params)
    params["quantizer"]["codebook"] = centres
    return state.replace(params=params)

  @functools.cached_property
  def _reconstruct(self):
    # The VAE's pictures decode the posterior mean.
    kwargs = {"sample": False} if self.variational else {}
    return jax.jit(lambda variables, x: self.host_model.apply(
        variables, to_float(x), **kwargs)["reconstruction"])

  @functools.cached_property
  def _decode_prior_samples(self):
    """The VAE's samples: z ~ N(0, I) on the latent grid, decoded."""
    def decode(variables, key, latent_shape):
      z = jax.random.normal(key, latent_shape)
      return to_uint8(self.host_model.apply(variables, z,
                                            method=Autoencoder.decode))
    return jax.jit(decode, static_argnums=2)

  def write_images(self, state: Stage1TrainState, batches: dict, step: int,
                   workdir: str) -> list[str]:
    """PNG grids: images (left) and their reconstructions (right); for the
    VAE also `samples_<step>.png`, decoded draws from its N(0, I) prior."""
    n = self.config.eval.num_images
    paths = []
    for split, batch in batches.items():
      originals = np.asarray(batch["image"][:n])
      recon = np.asarray(to_uint8(self._reconstruct(state.variables(),
                                                    originals)))
      paths.append(images.save_reconstructions(
          os.path.join(workdir, "images", f"reconstructions_{split}_{step:06d}.png"),
          originals, recon))
    if self.variational:
      h, w, _ = self.train_data.shape
      factor = 2 ** self.config.model.num_downsamples
      latent_shape = (n, h // factor, w // factor,
                      self.config.quantizer.code_dim)
      samples = self._decode_prior_samples(
          state.variables(), jax.random.PRNGKey(step), latent_shape)
      paths.append(images.save_grid(
          os.path.join(workdir, "images", f"samples_{step:06d}.png"),
          np.asarray(samples)))
    return paths


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage 1: trains `config`'s model in `workdir`; returns the final test
  metrics."""
  return loop.train_and_evaluate(lambda: Stage1Task(config), config, workdir)
