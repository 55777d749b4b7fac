"""Sample-quality metrics on a classifier's outputs (plain NumPy).

* `frechet_distance`: the Fréchet distance between two Gaussians fitted to
  feature sets (FID, Heusel et al. 2017, on our classifier's features).
* `inception_score`: `exp(E_x KL(p(y | x) || p(y)))` (Salimans et al. 2016)
  on our classifier's class probabilities.
* `class_histogram`: the fraction of images predicted as each class.
"""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean `[D]` and covariance `[D, D]` (float64) of `[N, D]` features."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"need [N >= 2, D] features, got {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray,
                     mean_b: np.ndarray, cov_b: np.ndarray) -> float:
  """`||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`.

  `tr((S_a S_b)^(1/2))` is computed as the sum of the square roots of the
  eigenvalues of the symmetric `S_a^(1/2) S_b S_a^(1/2)`, which has the same
  spectrum and is stable for singular covariances.
  """
  root_a = _psd_sqrt(cov_a)
  middle = root_a @ cov_b @ root_a
  trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(
      (middle + middle.T) / 2), 0.0, None)))
  diff = mean_a - mean_b
  return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b)
               - 2.0 * trace_sqrt)


def inception_score(probs: np.ndarray) -> float:
  """`exp(mean_x KL(p(y|x) || p(y)))` of class probabilities `[N, K]`;
  1 (all alike) to K (confident and evenly spread)."""
  probs = np.asarray(probs, np.float64)
  marginal = probs.mean(axis=0, keepdims=True)
  kl = np.sum(probs * (np.log(probs + 1e-12) - np.log(marginal + 1e-12)),
              axis=1)
  return float(np.exp(kl.mean()))


def class_histogram(probs: np.ndarray) -> np.ndarray:
  """Fraction of images whose most likely class is k: `[N, K]` -> `[K]`."""
  probs = np.asarray(probs)
  counts = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
  return counts / max(len(probs), 1)
