"""Label-free conditioning for a prior: k-means clusters of the training data.

A prior with `model.num_clusters = C` learns p(x | c) where c is the cluster
of x's features (a code grid's looked-up vectors, or a raw image's pixels)
among C k-means centres fitted on the training split, found without labels
(self-conditioning, as Liu et al. 2020 do for GANs). Sampling draws c from the
training split's cluster frequencies, then x given c: the prior decides the
global shape first, as a class label lets a class-conditional prior do, instead
of at the first informative positions of the raster order.

The likelihood stays honest: since p(x) = sum_c p(c) p(x | c) >= p(c(x))
p(x | c(x)), the reported NLL, -log p(c(x)) - log p(x | c(x)), is an upper
bound on the mixture's.

References:
  Arthur & Vassilvitskii. k-means++: the advantages of careful seeding.
  SODA 2007;
  Lloyd. Least squares quantization in PCM. IEEE Trans. Inf. Theory 1982;
  Liu et al. Diverse image generation via self-conditioned GANs. CVPR 2020.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vqjax import quantizer

CLUSTERS_FILE = "clusters.npz"


class Clusters(NamedTuple):
  """k-means clusters of one training split.

  Attributes:
    centres: [C, F] float32 cluster centres.
    counts: [C] int64 training examples per cluster.
    labels: {split: [N] int32} each example's cluster.
  """
  centres: np.ndarray
  counts: np.ndarray
  labels: dict[str, np.ndarray]


def code_features(tables: np.ndarray, codes: np.ndarray) -> np.ndarray:
  """What a code grid looks up, flattened: the vectors its codes stand for.

  Args:
    tables: [C_codes, K, d] lookup table of each code channel
      (`TrainedStage1.code_tables`).
    codes: [N, h, w, C_codes] ints.

  Returns:
    [N, h * w * C_codes * d] float32.
  """
  codes = np.asarray(codes, np.int64)
  looked_up = np.stack([tables[c][codes[..., c]]
                        for c in range(codes.shape[-1])], axis=-2)
  return looked_up.reshape(len(codes), -1).astype(np.float32)


def pixel_features(images: np.ndarray) -> np.ndarray:
  """[N, H, W, C] uint8 -> [N, H * W * C] float32 in [0, 1]."""
  return np.asarray(images, np.float32).reshape(len(images), -1) / 255.0


def assign(features: np.ndarray, centres: np.ndarray,
           batch_size: int = 10000) -> np.ndarray:
  """Nearest centre of each row: [N, F], [C, F] -> [N] int32."""
  nearest = jax.jit(quantizer.nearest_code)
  centres = jnp.asarray(centres)
  return np.concatenate([
      np.asarray(nearest(jnp.asarray(features[i:i + batch_size]), centres))
      for i in range(0, len(features), batch_size)]).astype(np.int32)


@functools.partial(jax.jit, static_argnums=1)
def kmeans_plus_plus(x: jax.Array, num_clusters: int,
                     key: jax.Array) -> jax.Array:
  """k-means++ seeds: each next centre is a point drawn with probability
  proportional to its squared distance to the nearest centre so far.
  [N, F] -> [C, F] (Arthur & Vassilvitskii 2007)."""
  keys = jax.random.split(key, num_clusters)
  first = x[jax.random.randint(keys[0], (), 0, len(x))]
  centres = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)
  nearest = jnp.sum((x - first) ** 2, axis=1)

  def add(i, carry):
    centres, nearest = carry
    pick = jax.random.categorical(keys[i], jnp.log(jnp.maximum(nearest,
                                                               1e-30)))
    nearest = jnp.minimum(nearest, jnp.sum((x - x[pick]) ** 2, axis=1))
    return centres.at[i].set(x[pick]), nearest

  return lax.fori_loop(1, num_clusters, add, (centres, nearest))[0]


def fit(features: dict[str, np.ndarray], num_clusters: int, seed: int,
        num_iters: int = 30) -> Clusters:
  """k-means (k-means++ seeds, then Lloyd) on `features["train"]` ([N, F]);
  every split assigned to its centres."""
  train = jnp.asarray(features["train"])
  seeds = kmeans_plus_plus(train, num_clusters, jax.random.PRNGKey(seed))
  centres = np.asarray(jax.jit(functools.partial(
      quantizer.kmeans, num_codes=num_clusters, key=None,
      num_iters=num_iters))(train, init=seeds))
  labels = {split: assign(f, centres) for split, f in features.items()}
  counts = np.bincount(labels["train"], minlength=num_clusters)
  return Clusters(centres=centres, counts=counts, labels=labels)


def cached_fit(workdir: str, key: str, features_fn, num_clusters: int,
               seed: int) -> Clusters:
  """`fit(features_fn(), ...)`, cached in `workdir` under `key` (what the
  features were computed from), so a resumed run sees the same clusters."""
  path = os.path.join(workdir, CLUSTERS_FILE)
  key = f"{key}|clusters={num_clusters}|seed={seed}"
  if os.path.exists(path):
    with np.load(path) as cached:
      if str(cached["key"]) == key:
        return Clusters(centres=cached["centres"], counts=cached["counts"],
                        labels={split: cached[f"labels_{split}"]
                                for split in ("train", "test")})
  clusters = fit(features_fn(), num_clusters, seed)
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, key=key, centres=clusters.centres, counts=clusters.counts,
           **{f"labels_{split}": labels
              for split, labels in clusters.labels.items()})
  os.replace(tmp, path)
  return clusters


def log_probs(counts) -> np.ndarray:
  """log p(c) of the training frequencies, add-one smoothed so that a test
  example in a cluster no training example fell in has a finite cost:
  [C] -> [C] float32 (nats)."""
  counts = np.asarray(counts, np.float64)
  return np.log((counts + 1.0) / (counts.sum() + len(counts))).astype(
      np.float32)


def draw(key: jax.Array, counts, num: int) -> jax.Array:
  """`num` clusters drawn from the (smoothed) training frequencies: [num]
  int32."""
  return jax.random.categorical(key, jnp.asarray(log_probs(counts)),
                                shape=(num,)).astype(jnp.int32)
