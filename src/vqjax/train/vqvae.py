"""Stage 1: what the training loop needs to train a VQ-VAE."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from vqjax import data, images, kernels, quantizer
from vqjax.configs import ConfigError
from vqjax.models import build
from vqjax.models.vector_quantizer import EMA_COLLECTION, RESTART_RNG
from vqjax.models.vqvae import VQVAE, to_float, to_uint8
from vqjax.parallel import AXIS
from vqjax.train import loop
from vqjax.train.state import TrainState, make_optimizer

def split_variables(variables) -> tuple[dict, dict]:
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


class VQVAETask:
  """Trains a VQ-VAE: loss = MSE / Var(train data) + quantizer loss."""
  progress_keys = ("loss", "nmse", "perplexity")

  def __init__(self, config: ml_collections.ConfigDict):
    if config.quantizer.dead_code_threshold > 0 and not config.quantizer.use_ema:
      raise ConfigError("quantizer.dead_code_threshold > 0 needs the EMA "
                       "codebook; set --config.quantizer.use_ema=True or "
                       "--config.quantizer.dead_code_threshold=0.")
    self.config = config
    self.train_data = data.load(config.data, "train")
    self.test_data = data.load(config.data, "test")
    self.data_variance = float(data.data_variance(self.train_data))
    channels = self.train_data.shape[-1]
    self.model = build.vqvae(config, channels, axis_name=AXIS)
    self.host_model = build.vqvae(config, channels)
    self.kernels = kernels.resolve(config.model.kernels)
    self.has_initialize = config.quantizer.kmeans_init
    self._rng, self._kmeans_rng = jax.random.split(
        jax.random.PRNGKey(config.seed), 2)

  def checkpoint_meta(self) -> dict:
    return {"kind": "vqvae", "image_shape": list(self.train_data.shape),
            "data_variance": self.data_variance}

  def check_resume(self, meta: dict) -> None:
    del meta  # A VQ-VAE run depends on no other run.

  def _apply(self, model: VQVAE, *args, inference: bool = False, **kwargs):
    """`model.apply`, computed by the kernels `config.model.kernels` picks."""
    with kernels.scope(self.kernels, inference=inference):
      return model.apply(*args, **kwargs)

  def create_train_state(self, rng, batch) -> TrainState:
    variables = jax.jit(self.host_model.init)({"params": rng},
                                     to_float(jnp.asarray(batch["image"])))
    params, model_state = split_variables(variables)
    return TrainState.create(apply_fn=self.model.apply, params=params,
                             tx=make_optimizer(self.config),
                             model_state=model_state)

  def _losses(self, out: dict, x: jax.Array) -> dict:
    mse = jnp.mean(jnp.square(out["reconstruction"] - x))
    nmse = mse / self.data_variance
    return {"loss": nmse + out["loss"], "mse": mse, "nmse": nmse,
            "codebook_loss": out["codebook_loss"],
            "commitment_loss": out["commitment_loss"]}

  def train_step(self, state: TrainState, batch: dict):
    """One optimisation step on one device's shard of the global batch."""
    x = to_float(batch["image"])
    rng = jax.random.fold_in(self._rng, state.step)
    mutable = list(state.model_state)

    def loss_fn(params):
      out, new_model_state = self._apply(
          self.model, {"params": params, **state.model_state}, x, train=True,
          mutable=mutable, rngs={RESTART_RNG: rng})
      losses = self._losses(out, x)
      return losses["loss"], (losses, out, new_model_state)

    grads, (losses, out, new_model_state) = jax.grad(
        loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS)
    state = state.apply_gradients(grads=grads,
                                  model_state=dict(new_model_state))
    metrics = lax.pmean(losses, AXIS)
    counts = lax.psum(out["counts"], AXIS)
    metrics["perplexity"] = quantizer.perplexity(counts)
    metrics["codes_used"] = quantizer.fraction_used(counts)
    if "restarted" in out:
      metrics["codes_restarted"] = out["restarted"]
    return state, metrics

  def eval_step(self, state: TrainState, batch: dict) -> dict:
    """Sums over the global batch (padding masked out)."""
    x = to_float(batch["image"])
    mask = batch["mask"]
    out = self._apply(self.model, state.variables(), x, train=False)
    per_image = jnp.sum(jnp.square(out["reconstruction"] - x), axis=(1, 2, 3))
    code_mask = jnp.broadcast_to(mask[:, None, None], out["indices"].shape)
    sums = {
        "squared_error": jnp.sum(per_image * mask),
        "num_values": jnp.sum(mask) * np.prod(x.shape[1:]),
        "commitment": jnp.sum(mask * jnp.mean(jnp.square(
            out["z_e"] - lax.stop_gradient(out["quantized"])), axis=(1, 2, 3))),
        "num_images": jnp.sum(mask),
        "counts": quantizer.code_counts(out["indices"],
                                        self.config.quantizer.num_codes,
                                        weights=code_mask),
    }
    return lax.psum(sums, AXIS)

  def summarize_eval(self, sums) -> dict[str, float]:
    mse = float(sums["squared_error"] / sums["num_values"])
    return {
        "mse": mse,
        "nmse": mse / self.data_variance,
        "commitment_loss": float(self.config.quantizer.beta * sums["commitment"]
                                 / sums["num_images"]),
        "perplexity": float(quantizer.perplexity(sums["counts"])),
        "codes_used": float(quantizer.fraction_used(sums["counts"])),
    }

  def initialize(self, state: TrainState, batch: dict) -> TrainState:
    """k-means codebook from the first global batch (identical on devices)."""
    cfg = self.config.quantizer
    z_e = self._apply(self.model, state.variables(), to_float(batch["image"]),
                      method=VQVAE.encode)
    centres = quantizer.kmeans(z_e, cfg.num_codes, self._kmeans_rng,
                               cfg.kmeans_iters, axis_name=AXIS)
    if cfg.use_ema:
      _, model_state = self.model.apply(state.variables(), centres,
                                        method=VQVAE.set_codebook,
                                        mutable=[EMA_COLLECTION])
      return state.replace(model_state=dict(model_state))
    params = jax.tree_util.tree_map(lambda x: x, state.params)
    params["quantizer"]["codebook"] = centres
    return state.replace(params=params)

  @functools.cached_property
  def _reconstruct(self):
    return jax.jit(lambda variables, x: self._apply(
        self.host_model, variables, to_float(x),
        inference=True)["reconstruction"])

  def write_images(self, state: TrainState, batches: dict, step: int,
                   workdir: str) -> list[str]:
    """PNG grids: images (left) and their reconstructions (right)."""
    n = self.config.eval.num_images
    paths = []
    for split, batch in batches.items():
      originals = np.asarray(batch["image"][:n])
      recon = np.asarray(to_uint8(self._reconstruct(state.variables(),
                                                    originals)))
      paths.append(images.save_reconstructions(
          os.path.join(workdir, "images", f"reconstructions_{split}_{step:06d}.png"),
          originals, recon))
    return paths


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage 1: trains a VQ-VAE in `workdir`; returns the final test metrics."""
  return loop.train_and_evaluate(lambda: VQVAETask(config), config, workdir)
