"""The sample-quality metrics against closed forms."""

import numpy as np
import pytest

from vqjax import metrics


def test_frechet_distance_of_identical_gaussians_is_zero():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
  mean, cov = metrics.feature_statistics(features)
  assert metrics.frechet_distance(mean, cov, mean, cov) == pytest.approx(
      0.0, abs=1e-8)


def test_frechet_distance_matches_the_diagonal_closed_form():
  mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  expected = np.sum((mean_a - mean_b) ** 2) + np.sum(
      (np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
  assert metrics.frechet_distance(mean_a, np.diag(var_a), mean_b,
                                  np.diag(var_b)) == pytest.approx(expected)


def test_frechet_distance_of_singular_covariances_is_finite():
  cov = np.diag([1.0, 0.0, 0.0])
  value = metrics.frechet_distance(np.zeros(3), cov, np.ones(3), cov)
  assert value == pytest.approx(3.0)


def test_inception_score_bounds_and_histogram():
  confident = np.eye(4)[np.arange(40) % 4]  # sure, and evenly spread
  assert metrics.inception_score(confident) == pytest.approx(4.0, rel=1e-6)
  alike = np.tile([0.7, 0.1, 0.1, 0.1], (40, 1))  # every image the same
  assert metrics.inception_score(alike) == pytest.approx(1.0)
  np.testing.assert_allclose(metrics.class_histogram(confident), [0.25] * 4)
  np.testing.assert_allclose(metrics.class_histogram(alike), [1, 0, 0, 0])
