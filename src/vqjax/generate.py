"""Pictures from a trained prior: the modes of `sample.py`.

Each mode returns uint8 images `[N, H, W, C]` plus the raw samples it drew
(codes `[N, h, w, C_codes]` for a code prior, pixels for a pixel prior).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from vqjax import clusters, data, images, quantizer, sampling
from vqjax.configs import ConfigError
from vqjax.runs import TrainedPrior, restore_prior, samples_to_images


def prior_samples(prior: TrainedPrior, key: jax.Array, num: int,
                  temperature: float = 1.0, labels: np.ndarray | None = None,
                  method: str = "cached", guidance: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Ancestral samples from the prior (decoded by the VQ-VAE if it has one).
  Without `labels`, a class-conditional prior cycles through its classes and
  a cluster-conditioned one draws its clusters (`draw_labels`). `guidance`
  w > 0: classifier-free guidance (`vqjax.sampling`), for a prior trained
  with label dropout."""
  if labels is None:
    key, labels = draw_labels(prior, key, num)
  samples = np.asarray(_sample(prior, key, num, temperature, labels, method,
                               guidance))
  return samples_to_images(samples, prior.vqvae), samples


def _sample(prior: TrainedPrior, key: jax.Array, num: int, temperature: float,
            labels, method: str, guidance: float) -> jax.Array:
  if guidance and prior.null_label is None:
    raise ConfigError(f"--guidance={guidance:g} needs a prior trained with "
                      "label dropout, but the prior in "
                      f"{prior.workdir} was not; retrain it with "
                      "--config.model.label_dropout=0.1 or leave --guidance "
                      "at 0.")
  return sampling.sample(
      prior.model, prior.variables, key, (num,) + prior.sample_shape,
      temperature,
      labels=None if labels is None else jnp.asarray(labels, jnp.int32),
      method=method, guidance=guidance, null_label=prior.null_label)


def draw_labels(prior: TrainedPrior, key: jax.Array, num: int
                ) -> tuple[jax.Array, np.ndarray | None]:
  """`num` labels to sample a conditional prior with, and the key left for
  the samples: classes in turn, or clusters drawn in their training
  proportions (which takes a split of `key`); None for an unconditional
  prior (`key` unchanged)."""
  if prior.cluster_counts is not None:
    key, k_labels = jax.random.split(key)
    return key, np.asarray(clusters.draw(k_labels, prior.cluster_counts, num))
  if prior.num_classes:
    return key, np.arange(num) % prior.num_classes
  return key, None


def class_rows(prior: TrainedPrior, key: jax.Array, per_class: int,
               temperature: float = 1.0, method: str = "cached",
               classes: np.ndarray | None = None, guidance: float = 0.0):
  """A row of `per_class` samples for each of `classes` (default: every
  class, or cluster, of a conditional prior)."""
  if classes is None:
    classes = np.arange(prior.num_classes)
  labels = np.repeat(classes, per_class)
  return prior_samples(prior, key, len(labels), temperature, labels, method,
                       guidance)


def random_codes(prior: TrainedPrior, key: jax.Array, num: int):
  """Uniformly random codes (every channel, on every level of a VQ-VAE-2),
  decoded: what the VQ-VAE makes without a prior. Returns (images, codes:
  `[N, h, w, C_codes]` for one level, `{level: [N, h, w, C_codes]}` for
  two)."""
  vqvae = prior.vqvae
  keys = jax.random.split(key, len(vqvae.levels))
  channels = (vqvae.code_channels,)
  codes = {level: np.asarray(jax.random.randint(
      k, (num,) + vqvae.code_shapes[level] + channels, 0, vqvae.num_codes),
                             np.int32)
           for k, level in zip(keys, vqvae.levels)}
  pictures = np.asarray(vqvae.decode_levels(codes))
  return pictures, codes if len(codes) > 1 else next(iter(codes.values()))


def nearest_neighbours(codebook: np.ndarray, num_neighbours: int) -> np.ndarray:
  """For each code, its `num_neighbours` nearest other codes in embedding
  space: `[K, D]` -> `[K, n]` int32."""
  distances = np.array(quantizer.squared_distances(codebook, codebook))
  np.fill_diagonal(distances, np.inf)
  return np.argsort(distances, axis=1)[:, :num_neighbours].astype(np.int32)


# The neighbour table is [K, K]: above this many codes per channel,
# `codes_near_test` is skipped.
MAX_NEIGHBOUR_CODES = 8192


def codes_near_test(prior: TrainedPrior, test_images: np.ndarray,
                    key: jax.Array, fraction: float = 0.25,
                    num_neighbours: int = 4):
  """Test images' codes with `fraction` of them moved to one of their
  `num_neighbours` nearest neighbours, decoded.

  Neighbours are taken in each code channel's lookup space
  (`TrainedStage1.code_tables`): the codebook (on the sphere for a cosine
  codebook; per residual depth or group, each code channel moving
  independently), FSQ's grid (the adjacent grid points) or LFQ's sign
  vectors (codes one bit away).

  Returns (`[3N, H, W, C]` images: test images, their reconstructions, the
  perturbed decodings; `[N, h, w, C_codes]` perturbed codes).

  Raises:
    ValueError: for more than `MAX_NEIGHBOUR_CODES` codes per channel.
  """
  vqvae = prior.vqvae
  if vqvae.num_codes > MAX_NEIGHBOUR_CODES:
    raise ValueError(f"codes near test codes needs a [K, K] neighbour table; "
                     f"K={vqvae.num_codes} > {MAX_NEIGHBOUR_CODES}.")
  codes = np.asarray(vqvae.encode(test_images))
  neighbours = np.stack([nearest_neighbours(table, num_neighbours)
                         for table in vqvae.code_tables()])  # [C, K, n]
  k_move, k_pick = jax.random.split(key)
  move = np.asarray(jax.random.bernoulli(k_move, fraction, codes.shape))
  pick = np.asarray(jax.random.randint(k_pick, codes.shape, 0, num_neighbours))
  channel = np.broadcast_to(np.arange(codes.shape[-1]), codes.shape)
  moved = np.where(move, neighbours[channel, codes, pick],
                   codes).astype(np.int32)
  pictures = np.concatenate([test_images, np.asarray(vqvae.decode(codes)),
                             np.asarray(vqvae.decode(moved))])
  return pictures, moved


def write_all(prior: TrainedPrior, outdir: str, num: int = 64,
              temperature: float = 1.0, seed: int = 0, method: str = "cached",
              near_fraction: float = 0.25, guidance: float = 0.0
              ) -> list[str]:
  """Writes every mode that applies to `prior` as `<mode>_step<S>.png` and
  `.npy` (S: the prior's checkpoint step). Codes near test codes are left
  out for more than `MAX_NEIGHBOUR_CODES` codes per channel."""
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
                                       method=method, guidance=guidance))
  if prior.cluster_counts is not None:  # the `cols` largest clusters
    largest = np.argsort(-prior.cluster_counts, kind="stable")[:cols]
    save("cluster_conditional", *class_rows(
        prior, keys[1], cols, temperature, method, largest, guidance), cols)
  elif prior.num_classes:
    per_class = max(1, num // prior.num_classes)
    save("class_conditional", *class_rows(
        prior, keys[1], per_class, temperature, method, guidance=guidance),
         per_class)
  if prior.vqvae is not None:
    save("random_codes", *random_codes(prior, keys[2], num))
  if prior.vqvae is not None and \
      prior.vqvae.num_codes <= MAX_NEIGHBOUR_CODES:
    pictures, moved = codes_near_test(prior, test, keys[3], near_fraction)
    np.save(stem("codes_near_test") + ".npy", moved)
    grids = [images.make_grid(p, cols) for p in np.split(pictures, 3)]
    written.append(images.save_image(
        stem("codes_near_test") + ".png",
        images.side_by_side(images.side_by_side(grids[0], grids[1]), grids[2])))
  return written


# VQ-VAE-2: a top prior and a bottom prior conditioned on the top codes.


def check_pair(top: TrainedPrior, bottom: TrainedPrior) -> None:
  """Raises unless `top` and `bottom` are the two priors of one VQ-VAE-2."""
  if bottom.level != "bottom":
    raise ConfigError(f"{bottom.workdir} is not a bottom-level prior (its level "
                     f"is {bottom.level!r}); pass the bottom prior as "
                     "--workdir and the top prior as --top_workdir.")
  if top.level != "top":
    raise ConfigError(f"{top.workdir} is not a top-level prior (its level is "
                     f"{top.level!r}); pass a --config.level=top run as "
                     "--top_workdir.")
  links = [(p.vqvae.workdir, p.vqvae.step) for p in (top, bottom)]
  if links[0] != links[1]:
    raise ConfigError(f"The top prior was trained on {links[0][0]}@{links[0][1]}"
                     f" but the bottom prior on {links[1][0]}@{links[1][1]}; "
                     "train both on the same VQ-VAE-2 run.")


def top_prior_for(prior: TrainedPrior, top_workdir: str | None,
                  vqvae_workdir: str | None = None) -> TrainedPrior | None:
  """The top-level prior to pair with `prior` (None for a one-level prior):
  a VQ-VAE-2 is sampled from both, the bottom one as `prior`."""
  if prior.level not in ("top", "bottom") and not top_workdir:
    return None
  if prior.level != "bottom" or not top_workdir:
    raise ConfigError(
        "A VQ-VAE-2 is sampled from both priors: pass the bottom-level prior "
        "as --workdir and the top-level prior as --top_workdir (got a "
        f"{prior.level or 'pixel'}-level prior as --workdir and "
        f"--top_workdir={top_workdir}).")
  top = restore_prior(top_workdir, vqvae_workdir)
  check_pair(top, prior)
  return top


def sample_bottom(bottom: TrainedPrior, key: jax.Array, top_codes: np.ndarray,
                  temperature: float = 1.0, method: str = "cached"
                  ) -> np.ndarray:
  """Bottom codes `[N, h_b, w_b, C_codes]` drawn given top codes
  `[N, h_t, w_t, C_codes]`."""
  samples = sampling.sample(
      bottom.model, bottom.variables, key,
      (len(top_codes),) + bottom.sample_shape, temperature,
      top_codes=jnp.asarray(top_codes, jnp.int32), method=method)
  return np.asarray(samples)


def hierarchical_samples(top: TrainedPrior, bottom: TrainedPrior,
                         key: jax.Array, num: int, temperature: float = 1.0,
                         method: str = "cached", guidance: float = 0.0):
  """Multi-stage generation: top codes from the top prior (guided by
  `guidance` if it was trained with label dropout), bottom codes from the
  bottom prior given them, both decoded by the VQ-VAE-2.

  Returns (uint8 images `[N, H, W, C]`, `{"top": [N, h_t, w_t, C_codes],
  "bottom": [N, h_b, w_b, C_codes]}`).
  """
  k_top, k_bottom = jax.random.split(key)
  k_top, labels = draw_labels(top, k_top, num)
  top_codes = np.asarray(_sample(top, k_top, num, temperature, labels, method,
                                 guidance))
  codes = {"top": top_codes,
           "bottom": sample_bottom(bottom, k_bottom, top_codes, temperature,
                                   method)}
  return np.asarray(bottom.vqvae.decode_levels(codes)), codes


def same_top_new_bottom(bottom: TrainedPrior, test_images: np.ndarray,
                        key: jax.Array, per_image: int = 4,
                        temperature: float = 1.0, method: str = "cached"):
  """Keeps the top codes of test images and redraws only the bottom codes.

  Returns (uint8 `[(2 + per_image) * N, H, W, C]`: the test images, their
  reconstructions, then `per_image` rows of decodings with the same top codes
  and new bottom codes; the new bottom codes `[per_image, N, h_b, w_b,
  C_codes]`).
  """
  vqvae = bottom.vqvae
  codes = vqvae.encode_levels(test_images)
  top = np.asarray(codes["top"])
  tiled = np.tile(top, (per_image, 1, 1, 1))
  new_bottom = sample_bottom(bottom, key, tiled, temperature, method)
  rows = [test_images, np.asarray(vqvae.decode_levels(codes)),
          np.asarray(vqvae.decode_levels({"top": tiled, "bottom": new_bottom}))]
  return (np.concatenate(rows),
          new_bottom.reshape((per_image,) + top.shape[:1] + new_bottom.shape[1:]))


def write_hierarchical(top: TrainedPrior, bottom: TrainedPrior, outdir: str,
                       num: int = 64, temperature: float = 1.0, seed: int = 0,
                       method: str = "cached", per_image: int = 4,
                       guidance: float = 0.0) -> list[str]:
  """Writes `hierarchical_samples_step<S>.png/.npz` and
  `same_top_new_bottom_step<S>.png/.npy` (S: the bottom prior's step), for
  priors paired by `top_prior_for`."""
  source = data.load(bottom.config.data, "test")
  test = source.batch(np.arange(min(8, len(source))))["image"]
  os.makedirs(outdir, exist_ok=True)
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)

  def stem(mode):
    return os.path.join(outdir, f"{mode}_step{bottom.step:06d}")

  pictures, codes = hierarchical_samples(top, bottom, keys[0], num,
                                         temperature, method, guidance)
  np.savez(stem("hierarchical_samples") + ".npz", **codes)
  written = [images.save_grid(stem("hierarchical_samples") + ".png", pictures,
                              max(1, math.ceil(math.sqrt(num))))]
  pictures, new_bottom = same_top_new_bottom(bottom, test, keys[1], per_image,
                                             temperature, method)
  np.save(stem("same_top_new_bottom") + ".npy", new_bottom)
  written.append(images.save_grid(stem("same_top_new_bottom") + ".png",
                                  pictures, len(test)))
  return written
