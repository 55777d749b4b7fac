"""Tests for the samplers: exact distribution, determinism, cached == plain."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import random_pixelcnn_params as random_params
from vqjax.models.pixelcnn import GatedPixelCNN
from vqjax.sampling import sample, sample_with_logits


def _joint_log_probs(model, params, shape, temperature):
  """log p(x) of every x in {0..V-1}^(H*W*C), lexicographic in raster order."""
  _, h, w, c = shape
  v = model.num_values
  configs = np.array(list(itertools.product(range(v), repeat=h * w * c)))
  x = jnp.asarray(configs.reshape(-1, h, w, c))
  logits = jax.jit(model.apply)(params, x)
  log_cond = jax.nn.log_softmax(logits / temperature, axis=-1)
  picked = jnp.take_along_axis(log_cond, x[..., None], axis=-1)
  return np.asarray(picked.reshape(len(configs), -1).sum(-1), np.float64)


def _config_index(samples, v):
  flat = np.asarray(samples).reshape(len(samples), -1)
  return flat @ (v ** np.arange(flat.shape[1] - 1, -1, -1))


def _chisquare_pvalue(counts, probs, min_expected=5.0):
  """Pearson chi-square p-value, pooling bins expected below `min_expected`."""
  expected = probs * counts.sum()
  small = expected < min_expected
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


def _assert_cached_equals_plain(model, params, key, shape, temperature, labels,
                                cond):
  """The cached and plain samplers draw the same samples for one key, and
  the logits each saw are the full model's on the finished samples."""
  draws = [sample_with_logits(model, params, key, shape,
                              temperature=temperature, labels=labels,
                              cond=cond, method=method)
           for method in ("cached", "plain")]
  np.testing.assert_array_equal(draws[0][0], draws[1][0])
  full = jax.jit(model.apply)(params, draws[0][0], labels, cond)
  for _, logits in draws:
    np.testing.assert_allclose(logits, full, atol=1e-4)


@pytest.mark.parametrize("method,grid", [
    ("plain", (2, 2, 1, 3)),
    ("cached", (2, 2, 1, 3)),
    ("cached", (1, 2, 3, 2)),
])
def test_samples_follow_the_model_joint(method, grid):
  h, w, c, v = grid
  n = 20000
  shape = (n, h, w, c)
  model = GatedPixelCNN(num_values=v, num_channels=c, features=6,
                        num_layers=1, kernel_size=3, head_features=6)
  params = random_params(model, jnp.zeros((1, h, w, c), jnp.int32), seed=3,
                         logit_scale=4.0)
  for temperature, seed in [(1.0, 0), (0.6, 1)]:
    probs = np.exp(_joint_log_probs(model, params, shape, temperature))
    # Only a causal model's conditionals multiply into a normalised joint.
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    samples = sample(model, params, jax.random.key(seed), shape,
                     temperature=temperature, method=method)
    counts = np.bincount(_config_index(samples, v), minlength=len(probs))
    assert _chisquare_pvalue(counts, probs) > 1e-3
    # Power check: the same counts reject the product of the marginals.
    marginals = probs.reshape((v,) * (h * w * c))
    independent = np.ones_like(marginals)
    for axis in range(marginals.ndim):
      others = tuple(a for a in range(marginals.ndim) if a != axis)
      shape_1d = [1] * marginals.ndim
      shape_1d[axis] = v
      independent = independent * marginals.sum(others).reshape(shape_1d)
    assert _chisquare_pvalue(counts, independent.ravel()) < 1e-3


def test_same_key_same_samples():
  model = GatedPixelCNN(num_values=5, features=8, num_layers=1, kernel_size=3,
                        head_features=8)
  shape = (4, 3, 4, 1)
  params = random_params(model, jnp.zeros(shape, jnp.int32))
  a = sample(model, params, jax.random.key(0), shape)
  b = sample(model, params, jax.random.key(0), shape)
  other = sample(model, params, jax.random.key(1), shape)
  assert a.shape == shape and a.dtype == jnp.int32
  assert np.all((np.asarray(a) >= 0) & (np.asarray(a) < 5))
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(other))


@pytest.mark.parametrize("num_channels,conditioned,kernel_size", [
    (1, False, 3),
    (3, False, 5),
    (1, True, 5),
    (3, True, 3),
])
def test_cached_sampler_matches_full_forward(num_channels, conditioned,
                                             kernel_size):
  b, h, w, c = 3, 4, 5, num_channels
  model = GatedPixelCNN(
      num_values=6, num_channels=c, features=12, num_layers=2,
      kernel_size=kernel_size, head_features=12,
      num_classes=4 if conditioned else 0,
      cond_features=2 if conditioned else 0)
  labels = cond = None
  if conditioned:
    labels = jnp.array([0, 3, 1])
    cond = jnp.asarray(np.random.default_rng(0).standard_normal(
        (b, h, w, 2)).astype(np.float32))
  shape = (b, h, w, c)
  params = random_params(model, jnp.zeros(shape, jnp.int32), labels, cond,
                         seed=1, logit_scale=3.0)
  key = jax.random.key(7)

  _assert_cached_equals_plain(model, params, key, shape, 0.8, labels, cond)


def test_invalid_arguments():
  model = GatedPixelCNN(num_values=3, features=4, num_layers=1, kernel_size=3,
                        head_features=4, num_classes=2)
  shape = (2, 2, 2, 1)
  params = random_params(model, jnp.zeros(shape, jnp.int32), jnp.zeros(2, int))
  key = jax.random.key(0)
  labels = jnp.array([0, 1])
  for temperature in (0.0, -1.0):
    with pytest.raises(ValueError, match="temperature"):
      sample(model, params, key, shape, temperature=temperature, labels=labels)
  with pytest.raises(ValueError, match="method"):
    sample(model, params, key, shape, labels=labels, method="fast")
  with pytest.raises(ValueError, match="num_channels"):
    sample(model, params, key, (2, 2, 2, 3), labels=labels)
  with pytest.raises(ValueError, match="labels"):
    sample(model, params, key, shape)


def test_sampler_runs_inside_jit_with_a_traced_temperature_and_greedy():
  """A user's jitted function may pass a traced temperature; `greedy` takes
  the argmax at every step (the same for every key), and it equals the
  argmax of the model's logits on its own samples."""
  model = GatedPixelCNN(num_values=5, features=8, num_layers=1, kernel_size=3,
                        head_features=8)
  shape = (3, 3, 4, 1)
  params = random_params(model, jnp.zeros(shape, jnp.int32), logit_scale=3.0)

  @jax.jit
  def draw(key, temperature):
    return sample(model, params, key, shape, temperature)

  np.testing.assert_array_equal(
      draw(jax.random.key(0), 0.7),
      sample(model, params, jax.random.key(0), shape, temperature=0.7))
  greedy = [sample(model, params, jax.random.key(k), shape, greedy=True,
                   method=m) for k, m in ((0, "cached"), (1, "plain"))]
  np.testing.assert_array_equal(greedy[0], greedy[1])
  logits = model.apply(params, greedy[0])
  np.testing.assert_array_equal(greedy[0], jnp.argmax(logits, axis=-1))


@pytest.mark.parametrize("attention_every", [0, 1])
def test_code_prior_samples_given_top_codes(attention_every):
  """A VQ-VAE-2 bottom prior (`CodePrior` with top codes, with or without
  attention): the sampler computes its conditioning map from the top codes,
  cached == plain, and the logits it sampled from are the model's on the
  final samples."""
  from vqjax.models import CodePrior  # pylint: disable=g-import-not-at-top
  prior = CodePrior(num_values=5, features=8, num_layers=1, kernel_size=3,
                    head_features=8, top_num_codes=4, top_upsamples=1,
                    cond_features=4, attention_every=attention_every,
                    attention_heads=2)
  shape = (2, 4, 4, 1)
  top = jax.random.randint(jax.random.key(0), (2, 2, 2, 1), 0, 4)
  variables = prior.init(jax.random.key(1), jnp.zeros(shape, jnp.int32),
                         top_codes=top)
  runs = [sample_with_logits(prior, variables, jax.random.key(2), shape,
                             top_codes=top, method=m)
          for m in ("cached", "plain")]
  np.testing.assert_array_equal(runs[0][0], runs[1][0])
  full = prior.apply(variables, runs[0][0], top_codes=top)
  np.testing.assert_allclose(runs[0][1], full, atol=1e-4)
  with pytest.raises(ValueError, match="top_codes"):
    sample(prior, variables, jax.random.key(2), shape)


@pytest.mark.parametrize("conditioned", [False, True])
def test_cached_sampler_with_attention_matches_full_forward(conditioned):
  """Attention blocks sample through their key/value cache: the same samples
  as the plain sampler, from the model's logits on the final samples; a
  model with dropout samples without it."""
  b, h, w = 2, 3, 4
  model = GatedPixelCNN(
      num_values=6, features=8, num_layers=3, kernel_size=3, head_features=8,
      attention_every=2, attention_heads=2, dropout=0.5,
      num_classes=4 if conditioned else 0,
      cond_features=2 if conditioned else 0)
  labels = cond = None
  if conditioned:
    labels = jnp.array([0, 3])
    cond = jnp.asarray(np.random.default_rng(0).standard_normal(
        (b, h, w, 2)).astype(np.float32))
  shape = (b, h, w, 1)
  params = random_params(model, jnp.zeros(shape, jnp.int32), labels, cond,
                         seed=2, logit_scale=3.0)
  assert {"attention_1"} <= set(params["params"])
  key = jax.random.key(3)
  _assert_cached_equals_plain(model, params, key, shape, 0.9, labels, cond)


@pytest.mark.parametrize("attention_every", [0, 2])
def test_classifier_free_guidance_draws_from_the_guided_logits(
    attention_every):
  """With guidance w each value is drawn from c + w (c - u): greedily, the
  argmax of the full model's logits on the finished samples with the labels
  (c) and with the "no label" class (u); either sampler draws the same
  samples; w = 0, even traced, is the conditional sampler."""
  b, h, w = 3, 3, 4
  null = 3
  model = GatedPixelCNN(
      num_values=6, features=8, num_layers=3, kernel_size=3, head_features=8,
      attention_every=attention_every, attention_heads=2, num_classes=null + 1,
      cond_features=2)
  labels = jnp.array([0, 2, 1])
  cond = jnp.asarray(np.random.default_rng(0).standard_normal(
      (b, h, w, 2)).astype(np.float32))
  shape = (b, h, w, 1)
  params = random_params(model, jnp.zeros(shape, jnp.int32), labels, cond,
                         seed=4, logit_scale=3.0)
  guided = lambda key, method, weight, **kw: sample(  # noqa: E731
      model, params, key, shape, labels=labels, cond=cond, method=method,
      guidance=weight, null_label=null, **kw)
  greedy = [guided(jax.random.key(0), m, 1.5, greedy=True)
            for m in ("cached", "plain")]
  np.testing.assert_array_equal(greedy[0], greedy[1])
  c = model.apply(params, greedy[0], labels, cond)
  u = model.apply(params, greedy[0], jnp.full((b,), null), cond)
  np.testing.assert_array_equal(greedy[0], jnp.argmax(c + 1.5 * (c - u), -1))
  assert not np.array_equal(greedy[0], jnp.argmax(c, -1))  # guidance matters
  key = jax.random.key(5)
  np.testing.assert_array_equal(guided(key, "cached", 2.0, temperature=0.8),
                                guided(key, "plain", 2.0, temperature=0.8))
  traced = jax.jit(lambda k, weight: guided(k, "cached", weight))
  np.testing.assert_array_equal(
      traced(key, 0.0),
      sample(model, params, key, shape, labels=labels, cond=cond))
  with pytest.raises(ValueError, match="null_label"):
    sample(model, params, key, shape, labels=labels, cond=cond, guidance=1.0)
  with pytest.raises(ValueError, match="guidance must be >= 0"):
    guided(key, "cached", -1.0)
  with pytest.raises(ValueError, match="not a class of the model"):
    sample(model, params, key, shape, labels=labels, cond=cond, guidance=1.0,
           null_label=null + 1)
