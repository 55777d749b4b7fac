"""`vqjax.clusters`: k-means conditioning for a prior without labels."""

import os

import jax
import numpy as np
import pytest

from vqjax import clusters


def _blobs(rng, n_per, centres, scale=0.05):
  return np.concatenate([c + scale * rng.standard_normal((n_per, len(c)))
                         for c in centres]).astype(np.float32)


def test_code_features_are_the_looked_up_vectors():
  tables = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)  # [C, K, d]
  codes = np.array([[[[1, 4]], [[0, 2]]]])  # [1, 2, 1, 2]
  features = clusters.code_features(tables, codes)
  assert features.shape == (1, 2 * 1 * 2 * 3)
  np.testing.assert_array_equal(features[0], np.concatenate(
      [tables[0, 1], tables[1, 4], tables[0, 0], tables[1, 2]]))


def test_fit_finds_separated_clusters_and_assigns_every_split():
  rng = np.random.default_rng(0)
  centres = np.eye(4, 6, dtype=np.float32) * 3
  train, test = _blobs(rng, 50, centres), _blobs(rng, 10, centres)
  fitted = clusters.fit({"train": train, "test": test}, 4, seed=0)
  assert fitted.centres.shape == (4, 6)
  assert fitted.counts.tolist() == [50] * 4
  # One cluster per blob, and each test point in its blob's cluster.
  train_ids = fitted.labels["train"].reshape(4, 50)
  assert all(len(set(row)) == 1 for row in train_ids)
  assert len(set(train_ids[:, 0])) == 4
  np.testing.assert_array_equal(fitted.labels["test"].reshape(4, 10),
                                np.repeat(train_ids[:, :1], 10, axis=1))
  assert fitted.labels["test"].dtype == np.int32


def test_cached_fit_reuses_the_file_only_for_the_same_source(tmp_path):
  rng = np.random.default_rng(1)
  calls = []

  def features():
    calls.append(1)
    return {"train": rng.standard_normal((40, 3)).astype(np.float32),
            "test": rng.standard_normal((8, 3)).astype(np.float32)}

  first = clusters.cached_fit(str(tmp_path), "run@1:codes", features, 3, 0)
  again = clusters.cached_fit(str(tmp_path), "run@1:codes", features, 3, 0)
  assert len(calls) == 1
  np.testing.assert_array_equal(first.centres, again.centres)
  np.testing.assert_array_equal(first.labels["test"], again.labels["test"])
  clusters.cached_fit(str(tmp_path), "run@2:codes", features, 3, 0)
  clusters.cached_fit(str(tmp_path), "run@2:codes", features, 4, 0)
  assert len(calls) == 3
  assert os.listdir(tmp_path) == [clusters.CLUSTERS_FILE]


def test_draws_follow_the_smoothed_training_frequencies():
  counts = np.array([600, 300, 100, 0])
  log_p = clusters.log_probs(counts)
  np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.exp(log_p), np.array([601, 301, 101, 1]) / 1004,
                             rtol=1e-5)
  drawn = np.asarray(clusters.draw(jax.random.PRNGKey(0), counts, 20000))
  assert drawn.dtype == np.int32
  np.testing.assert_allclose(np.bincount(drawn, minlength=4) / 20000,
                             np.exp(log_p), atol=0.015)
