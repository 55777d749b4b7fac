"""Pictures from a trained prior: the modes of `sample.py`.

Each mode returns uint8 images `[N, H, W, C]` plus the raw samples it drew
(codes `[N, h, w]` for a code prior, pixels for a pixel prior).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from vqjax import data, images, quantizer, sampling
from vqjax.runs import TrainedPrior, samples_to_images


def prior_samples(prior: TrainedPrior, key: jax.Array, num: int,
                  temperature: float = 1.0, labels: np.ndarray | None = None,
                  method: str = "cached") -> tuple[np.ndarray, np.ndarray]:
  """Ancestral samples from the prior (decoded by the VQ-VAE if it has one)."""
  if prior.num_classes and labels is None:
    labels = np.arange(num) % prior.num_classes
  samples = sampling.sample(
      prior.model, prior.variables, key, (num,) + prior.sample_shape,
      temperature, labels=None if labels is None else jnp.asarray(labels, jnp.int32),
      method=method)
  samples = np.asarray(samples)
  return samples_to_images(samples, prior.vqvae), samples


def class_rows(prior: TrainedPrior, key: jax.Array, per_class: int,
               temperature: float = 1.0, method: str = "cached"):
  """A row of `per_class` samples for every class (class-conditional priors)."""
  labels = np.repeat(np.arange(prior.num_classes), per_class)
  return prior_samples(prior, key, len(labels), temperature, labels, method)


def random_codes(prior: TrainedPrior, key: jax.Array, num: int):
  """Uniformly random codes, decoded: what the VQ-VAE makes without a prior."""
  h, w, _ = prior.sample_shape
  codes = np.asarray(jax.random.randint(key, (num, h, w), 0,
                                        prior.vqvae.num_codes), np.int32)
  return np.asarray(prior.vqvae.decode(codes)), codes


def nearest_neighbours(codebook: np.ndarray, num_neighbours: int) -> np.ndarray:
  """For each code, its `num_neighbours` nearest other codes in embedding
  space: `[K, D]` -> `[K, n]` int32."""
  distances = np.array(quantizer.squared_distances(codebook, codebook))
  np.fill_diagonal(distances, np.inf)
  return np.argsort(distances, axis=1)[:, :num_neighbours].astype(np.int32)


def codes_near_test(prior: TrainedPrior, test_images: np.ndarray,
                    key: jax.Array, fraction: float = 0.25,
                    num_neighbours: int = 4):
  """Test images' codes with `fraction` of positions moved to one of their
  `num_neighbours` nearest codebook neighbours (in embedding space), decoded.

  Returns (`[3N, H, W, C]` images: test images, their reconstructions, the
  perturbed decodings; `[N, h, w]` perturbed codes).
  """
  vqvae = prior.vqvae
  codes = np.asarray(vqvae.encode(test_images))
  neighbours = nearest_neighbours(vqvae.codebook(), num_neighbours)
  k_move, k_pick = jax.random.split(key)
  move = np.asarray(jax.random.bernoulli(k_move, fraction, codes.shape))
  pick = np.asarray(jax.random.randint(k_pick, codes.shape, 0, num_neighbours))
  moved = np.where(move, neighbours[codes, pick], codes).astype(np.int32)
  pictures = np.concatenate([test_images, np.asarray(vqvae.decode(codes)),
                             np.asarray(vqvae.decode(moved))])
  return pictures, moved


def write_all(prior: TrainedPrior, outdir: str, num: int = 64,
              temperature: float = 1.0, seed: int = 0, method: str = "cached",
              near_fraction: float = 0.25) -> list[str]:
  """Writes every mode that applies to `prior` as `<mode>_step<S>.png` and
  `.npy` (S: the prior's checkpoint step)."""
  test = None
  if prior.vqvae is not None:  # Fail before sampling.
    source = data.load(prior.config.data, "test")
    test = source.batch(np.arange(min(num, len(source))))["image"]
  os.makedirs(outdir, exist_ok=True)
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  cols = max(1, math.ceil(math.sqrt(num)))
  written = []

  def stem(mode):
    return os.path.join(outdir, f"{mode}_step{prior.step:06d}")

  def save(mode, pictures, raw, num_cols=cols):
    np.save(stem(mode) + ".npy", raw)
    written.append(images.save_grid(stem(mode) + ".png", pictures, num_cols))

  save("prior_samples", *prior_samples(prior, keys[0], num, temperature,
                                       method=method))
  if prior.num_classes:
    per_class = max(1, num // prior.num_classes)
    save("class_conditional", *class_rows(prior, keys[1], per_class,
                                          temperature, method), per_class)
  if prior.vqvae is not None:
    save("random_codes", *random_codes(prior, keys[2], num))
    pictures, moved = codes_near_test(prior, test, keys[3], near_fraction)
    np.save(stem("codes_near_test") + ".npy", moved)
    grids = [images.make_grid(p, cols) for p in np.split(pictures, 3)]
    written.append(images.save_image(
        stem("codes_near_test") + ".png",
        images.side_by_side(images.side_by_side(grids[0], grids[1]), grids[2])))
  return written
