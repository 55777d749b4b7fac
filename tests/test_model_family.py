"""The stage-1 model family: the discrete likelihood every model is scored
by, VQ-VAE-2's levels (shapes, gradient paths, per-level codebooks), the AE
and VAE bottlenecks, and real MNIST runs of each model end to end."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import load_config, subset_data_dir
from vqjax import likelihood, quantizer, runs
from vqjax.configs import tiny_vqvae
from vqjax.models import build
from vqjax.models.autoencoder import SAMPLE_RNG, Autoencoder
from vqjax.models.vector_quantizer import EMA_COLLECTION
from vqjax.models.vqvae2 import VQVAE2
from vqjax.train import stage1

SMALL = dict(num_hiddens=8, num_residual_hiddens=4, num_residual_layers=1,
             num_codes=8, code_dim=4)
PIXELS = np.arange(256) / 255.0 - 0.5  # The 256 values, on the model's scale.


def _random_variables(model, *args, seed=0, **kwargs):
  """Variables in the shapes `model.init` gives, drawn with NumPy (random
  initializers compile slowly on XLA:CPU): LeCun-normal kernels, N(0, 0.1^2)
  biases, N(0, 1) codebooks; EMA codebooks start as `ema_init` starts them."""
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.PRNGKey(0),
                          SAMPLE_RNG: jax.random.PRNGKey(1)}, *args, **kwargs))
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    value = rng.standard_normal(x.shape).astype(np.float32)
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      value /= np.sqrt(np.prod(x.shape[:-1]))
    elif "bias" in name:
      value *= 0.1
    return jnp.asarray(value)

  variables = {"params": jax.tree_util.tree_map_with_path(leaf,
                                                          shapes["params"])}
  if EMA_COLLECTION in shapes:
    variables[EMA_COLLECTION] = {
        name: quantizer.ema_init(leaf((), ema["codebook"]))._asdict()
        for name, ema in shapes[EMA_COLLECTION].items()}
  return variables


def _images(shape, seed=0):
  """uint8-valued images on the [-0.5, 0.5] scale."""
  values = np.random.default_rng(seed).integers(0, 256, shape)
  return jnp.asarray(values / 255.0 - 0.5, jnp.float32)


# --- The discrete likelihood. ------------------------------------------------

MEANS = [-3.0, -0.5, -0.31, 0.0, 0.123, 0.5, 0.77, 4.0]
VARIANCES = [1e-6, 1e-4, 1e-2, 1.0, 10.0]


def _log_probs_of_every_bin(mean, variance):
  """`[len(mean), len(variance), 256]`: log p of each pixel value."""
  x = jnp.asarray(PIXELS, jnp.float32)
  m = jnp.asarray(mean, jnp.float32)[:, None, None]
  v = jnp.asarray(variance, jnp.float32)[None, :, None]
  return likelihood.discretized_gaussian_log_prob(x, m, v)


def test_discrete_likelihood_is_a_distribution_over_256_values():
  log_p = np.asarray(_log_probs_of_every_bin(MEANS, VARIANCES))
  assert np.all(np.isfinite(log_p))
  assert np.all(log_p <= 0.0)
  np.testing.assert_allclose(np.exp(log_p).sum(-1), 1.0, atol=1e-4)


def test_discrete_likelihood_gradient_wrt_mean_is_finite():
  x = jnp.asarray(PIXELS, jnp.float32)

  def log_p(mean, variance):
    return likelihood.discretized_gaussian_log_prob(x, mean, variance)

  # d log p(x_k) / d mean for every bin k, one mean at a time.
  grads_of_bins = jax.jit(jax.vmap(jax.jacrev(log_p), in_axes=(0, None)))
  for variance in VARIANCES:
    grads = grads_of_bins(jnp.asarray(MEANS, jnp.float32),
                          jnp.float32(variance))
    assert np.all(np.isfinite(np.asarray(grads))), variance
  # Moderate values: d log p / d mean = -(phi(u) - phi(l)) / (s P), in float64.
  mean, variance = 0.1, 0.01
  g = np.asarray(jax.jacrev(log_p)(jnp.float32(mean), jnp.float32(variance)))
  s, half = math.sqrt(variance), 0.5 / 255
  u, l = (PIXELS + half - mean) / s, (PIXELS - half - mean) / s
  density = stats.norm.pdf(u) - stats.norm.pdf(l)
  mass = stats.norm.cdf(u) - stats.norm.cdf(l)
  density[0], mass[0] = stats.norm.pdf(u[0]), stats.norm.cdf(u[0])
  density[-1], mass[-1] = -stats.norm.pdf(l[-1]), stats.norm.sf(l[-1])
  np.testing.assert_allclose(g, -density / (s * mass), rtol=2e-3, atol=1e-2)
  # Moving the mean towards a pixel value makes it more likely.
  np.testing.assert_array_less(0.0, -g[PIXELS < 0.09])
  np.testing.assert_array_less(0.0, g[PIXELS > 0.11])


def test_discrete_likelihood_matches_float64_normal_cdf():
  means = np.array([-0.5, -0.2, 0.0, 0.05, 0.3, 0.5])
  variances = np.array([1e-4, 1e-3, 1e-2, 0.1, 1.0])
  half = 0.5 / 255
  scale = np.sqrt(variances)[None, :, None]
  upper = stats.norm.cdf((PIXELS + half - means[:, None, None]) / scale)
  lower = stats.norm.cdf((PIXELS - half - means[:, None, None]) / scale)
  expected = upper - lower
  expected[..., 0] = upper[..., 0]         # (-inf, x_0 + half bin]
  expected[..., -1] = 1.0 - lower[..., -1]  # (x_255 - half bin, inf)
  log_p = np.asarray(_log_probs_of_every_bin(means, variances), np.float64)
  keep = expected > 1e-12  # Moderate: where float64 itself is exact.
  assert keep.mean() > 0.5
  np.testing.assert_allclose(log_p[keep], np.log(expected[keep]),
                             rtol=1e-4, atol=2e-4)
  np.testing.assert_allclose(np.exp(log_p), expected, atol=1e-5)


def test_bits_per_dim_converts_nats_per_example():
  assert likelihood.bits_per_dim(784 * math.log(2.0), 784) == pytest.approx(1)


# --- VQ-VAE-2. -----------------------------------------------------------------

def _tiny(name, variant=""):
  config = load_config(name, variant)
  tiny_vqvae(config)
  config.quantizer.num_codes = 8
  config.quantizer.code_dim = 4
  config.model.num_hiddens = 8
  config.model.num_residual_hiddens = 4
  return config


@pytest.mark.parametrize("name,image,bottom,top", [
    ("mnist_vqvae2", (28, 28, 1), (14, 14), (7, 7)),
    ("cifar10_vqvae2", (32, 32, 3), (8, 8), (4, 4)),
])
def test_vqvae2_shapes_and_decode_of_codes(name, image, bottom, top):
  config = _tiny(name)
  model = build.stage1(config, out_channels=image[-1])
  assert isinstance(model, VQVAE2) and model.levels == ("top", "bottom")
  x = _images((2, *image))
  variables = _random_variables(model, x)
  out = model.apply(variables, x)
  assert out["reconstruction"].shape == x.shape
  assert out["levels"]["top"]["indices"].shape == (2, *top)
  assert out["levels"]["bottom"]["indices"].shape == (2, *bottom)
  assert out["levels"]["top"]["z_e"].shape == (2, *top, 4)
  assert out["levels"]["bottom"]["z_e"].shape == (2, *bottom, 4)
  codes = model.apply(variables, x, method=VQVAE2.encode_to_indices)
  assert set(codes) == {"top", "bottom"}
  np.testing.assert_array_equal(codes["top"][..., 0],
                                out["levels"]["top"]["indices"])
  np.testing.assert_array_equal(codes["bottom"][..., 0],
                                out["levels"]["bottom"]["indices"])
  decoded = model.apply(variables, codes["top"], codes["bottom"],
                        method=VQVAE2.decode_indices)
  np.testing.assert_allclose(decoded, out["reconstruction"], atol=1e-5)
  # codebook(level) is that level's own EMA codebook.
  for level in ("top", "bottom"):
    book = model.apply(variables, level, method=VQVAE2.codebook)
    np.testing.assert_array_equal(
        book, variables[EMA_COLLECTION][f"{level}_quantizer"]["codebook"])


@pytest.fixture(scope="module")
def loss_vqvae2():
  """A 16x16 two-level VQ-VAE-2 with codebooks as params (loss variant)."""
  model = VQVAE2(**SMALL, num_downsamples=1, top_downsamples=1,
                 use_ema=False)
  x = _images((2, 28, 28, 1), seed=1)
  params = _random_variables(model, x)["params"]
  return model, params, x


def _abs_sum(tree):
  return float(sum(jnp.abs(leaf).sum() for leaf in jax.tree_util.tree_leaves(tree)))


def test_vqvae2_reconstruction_reaches_both_encoders_not_codebooks(loss_vqvae2):
  model, params, x = loss_vqvae2

  def reconstruction_loss(params):
    out = model.apply({"params": params}, x)
    return jnp.mean(jnp.square(out["reconstruction"] - x))

  grads = jax.grad(reconstruction_loss)(params)
  # Straight-through at both levels: the decoder's error reaches both encoders.
  for name in ("bottom_encoder", "top_encoder", "top_pre_quantization",
               "top_decoder", "bottom_pre_quantization", "upsample_top_0",
               "decoder"):
    assert _abs_sum(grads[name]) > 0, name
  # ... and never the codebooks, which only their own codebook losses train.
  assert _abs_sum(grads["top_quantizer"]["codebook"]) == 0
  assert _abs_sum(grads["bottom_quantizer"]["codebook"]) == 0


def test_vqvae2_each_codebook_gets_only_its_own_levels_loss(loss_vqvae2):
  model, params, x = loss_vqvae2

  def level_loss(params, level, term):
    return model.apply({"params": params}, x)["levels"][level][term]

  for level, other in (("top", "bottom"), ("bottom", "top")):
    grads = jax.grad(level_loss)(params, level, "codebook_loss")
    assert _abs_sum(grads[f"{level}_quantizer"]["codebook"]) > 0, level
    assert _abs_sum(grads[f"{other}_quantizer"]["codebook"]) == 0, level
    # The codebook loss trains the codebook and nothing else.
    rest = {k: v for k, v in grads.items() if not k.endswith("_quantizer")}
    assert _abs_sum(rest) == 0, level
    # The commitment loss trains the encoders, never a codebook.
    grads = jax.grad(level_loss)(params, level, "commitment_loss")
    assert _abs_sum(grads["top_quantizer"]) == 0, level
    assert _abs_sum(grads["bottom_quantizer"]) == 0, level
    assert _abs_sum(grads[f"{level}_pre_quantization"]) > 0, level

  # The model's loss is both levels' terms.
  out = model.apply({"params": params}, x)
  total = sum(out["levels"][level][term] for level in ("top", "bottom")
              for term in ("codebook_loss", "commitment_loss"))
  np.testing.assert_allclose(out["loss"], total, rtol=1e-6)


def test_vqvae2_ema_codebooks_update_per_level():
  model = VQVAE2(**SMALL, num_downsamples=1, top_downsamples=1, use_ema=True,
                 decay=0.9, dead_code_threshold=0.0)
  batch = 3
  x = _images((batch, 28, 28, 1), seed=2)
  variables = _random_variables(model, x)
  before = variables[EMA_COLLECTION]
  assert "top_quantizer" in before and "bottom_quantizer" in before
  out, updated = model.apply(variables, x, train=True,
                             mutable=[EMA_COLLECTION])
  updated = updated[EMA_COLLECTION]
  for level, grid in (("top", 7 * 7), ("bottom", 14 * 14)):
    ema = updated[f"{level}_quantizer"]
    q = out["levels"][level]
    assert int(ema["count"]) == 1, level
    # One step from zero: the debiased cluster sizes are this level's counts.
    sizes = np.asarray(ema["cluster_size"]) / (1 - 0.9)
    np.testing.assert_allclose(sizes.sum(), batch * grid, rtol=1e-5)
    np.testing.assert_allclose(sizes, q["counts"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        q["counts"], quantizer.code_counts(q["indices"], 8), rtol=0)
    # Each used code moves to the mean of this level's vectors assigned to it.
    z = np.asarray(q["z_e"]).reshape(-1, 4)
    idx = np.asarray(q["indices"]).reshape(-1)
    for k in np.unique(idx):
      np.testing.assert_allclose(ema["codebook"][k], z[idx == k].mean(0),
                                 rtol=1e-3, atol=1e-5)
    assert not np.allclose(ema["codebook"],
                           before[f"{level}_quantizer"]["codebook"])


# --- The AE and VAE bottlenecks. -----------------------------------------------

AE_SMALL = dict(num_hiddens=8, num_residual_hiddens=4, num_residual_layers=1,
                num_downsamples=2, code_dim=3)


def test_autoencoder_is_deterministic_without_kl():
  model = Autoencoder(**AE_SMALL, variational=False)
  x = _images((2, 16, 16, 1), seed=3)
  variables = _random_variables(model, x)
  a = model.apply(variables, x)
  b = model.apply(variables, x, rngs={SAMPLE_RNG: jax.random.PRNGKey(5)})
  assert a["levels"] == {} and model.levels == ()
  assert a["z"].shape == (2, 4, 4, 3)
  np.testing.assert_array_equal(a["kl"], np.zeros(2))
  np.testing.assert_array_equal(a["reconstruction"], b["reconstruction"])
  assert a["reconstruction"].shape == x.shape


@pytest.fixture(scope="module")
def hand_set_vae():
  """A VAE whose posterior is the same N(mu, diag(sigma^2)) at every latent
  position: the 1x1 conv to (mean, log variance) has zero kernel and a
  hand-set bias."""
  model = Autoencoder(**AE_SMALL, variational=True)
  x = _images((2, 16, 16, 1), seed=4)
  variables = _random_variables(model, x)
  mu = np.array([0.5, -1.0, 0.0], np.float32)
  log_var = np.array([-1.0, 0.3, 0.0], np.float32)
  params = jax.tree_util.tree_map(lambda v: v, variables["params"])
  head = params["pre_bottleneck"]
  params["pre_bottleneck"] = {"kernel": jnp.zeros_like(head["kernel"]),
                              "bias": jnp.asarray(np.concatenate([mu, log_var]))}
  return model, {"params": params}, x, mu, log_var


def test_vae_kl_is_the_closed_form_and_a_monte_carlo_estimate(hand_set_vae):
  model, variables, x, mu, log_var = hand_set_vae
  out = model.apply(variables, x, rngs={SAMPLE_RNG: jax.random.PRNGKey(0)})
  positions = 4 * 4
  sigma = np.exp(0.5 * log_var.astype(np.float64))
  closed = positions * np.sum(np.log(1 / sigma) + (sigma ** 2 + mu ** 2) / 2
                              - 0.5)
  np.testing.assert_allclose(out["kl"], [closed, closed], rtol=1e-5)
  # KL = E_q[log q(z) - log p(z)], estimated from draws of q.
  draws = np.random.default_rng(0).normal(mu, sigma, (400_000, 3))
  monte_carlo = positions * np.mean(np.sum(
      stats.norm.logpdf(draws, mu, sigma) - stats.norm.logpdf(draws), -1))
  np.testing.assert_allclose(out["kl"][0], monte_carlo, rtol=1e-2)
  # The samples z come from that posterior (reparameterised).
  z = np.asarray(out["z"]).reshape(-1, 3)
  assert np.all(np.abs(z.mean(0) - mu) < 4 * sigma / np.sqrt(len(z)))
  np.testing.assert_allclose(z.std(0), sigma, rtol=0.3)
  # KL >= 0 for any posterior (here an init's), 0 only at the prior.
  kl = model.apply(_random_variables(model, x, seed=3), x, rngs={SAMPLE_RNG: jax.random.PRNGKey(0)})["kl"]
  assert np.all(np.asarray(kl) >= 0)
  prior = jax.tree_util.tree_map(jnp.zeros_like, variables)
  prior["params"]["encoder"] = variables["params"]["encoder"]
  prior["params"]["decoder"] = variables["params"]["decoder"]
  kl = model.apply(prior, x, rngs={SAMPLE_RNG: jax.random.PRNGKey(0)})["kl"]
  np.testing.assert_allclose(kl, 0.0, atol=1e-6)


def test_vae_samples_with_its_rng_and_decodes_the_mean_without(hand_set_vae):
  model, variables, x, mu, _ = hand_set_vae
  recon = {seed: model.apply(variables, x,
                             rngs={SAMPLE_RNG: jax.random.PRNGKey(seed)}
                             )["reconstruction"] for seed in (0, 0, 1)}
  a = model.apply(variables, x, rngs={SAMPLE_RNG: jax.random.PRNGKey(0)})
  b = model.apply(variables, x, rngs={SAMPLE_RNG: jax.random.PRNGKey(1)})
  np.testing.assert_array_equal(a["reconstruction"], recon[0])
  assert not np.allclose(a["reconstruction"], b["reconstruction"])
  assert not np.allclose(a["z"], b["z"])
  # sample=False: the posterior mean, decoded; no rng needed.
  mean = model.apply(variables, x, sample=False)
  expected_z = np.broadcast_to(mu, (2, 4, 4, 3))
  np.testing.assert_array_equal(mean["z"], expected_z)
  np.testing.assert_allclose(
      mean["reconstruction"],
      model.apply(variables, jnp.asarray(expected_z), method=Autoencoder.decode),
      rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(mean["kl"], a["kl"])


# --- End to end on real MNIST. -------------------------------------------------

def _short_run(name, variant, num_steps, log_every=None):
  """`configs/<name>.py:<variant>` trained `num_steps` on real MNIST, with one
  evaluation and one checkpoint, at the end."""
  path = subset_data_dir()
  if path is None:
    pytest.skip("real MNIST not found: set VQJAX_DATA_DIR")
  config = load_config(name, variant)
  config.data.dir = path
  config.train.num_steps = num_steps
  config.train.log_every = log_every or num_steps
  config.eval.every = num_steps
  config.checkpoint.every = num_steps
  return config


def _records(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return sorted((r for r in records if r["split"] == split),
                key=lambda r: r["step"])


def test_vae_trains_on_mnist_elbo_decreases_and_samples(tmp_path):
  config = _short_run("mnist_vae", "tiny", num_steps=30, log_every=5)
  config.train.learning_rate = 1e-3  # A clear trend within 30 steps.
  config.eval.every = 15
  workdir = str(tmp_path)
  metrics = stage1.train_and_evaluate(config, workdir)
  train = _records(workdir, "train")
  assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
  # The training loss is the negative ELBO per dimension (nats).
  for r in train:
    assert np.isfinite(r["loss"]) and r["kl_per_dim"] >= 0
  # It decreases, and so does the test bound (decoder likelihood plus KL).
  assert train[-1]["loss"] < train[0]["loss"] - 0.05, train
  test = _records(workdir, "test")
  assert [r["step"] for r in test] == [15, 30]
  assert test[1]["bits_per_dim"] < test[0]["bits_per_dim"], test
  # Both terms of the bound, in bits per dimension.
  assert metrics["kl_bits_per_dim"] > 0
  assert metrics["bits_per_dim"] == pytest.approx(
      metrics["reconstruction_bits_per_dim"] + metrics["kl_bits_per_dim"])
  assert 0 < metrics["bits_per_dim"] < 8  # Better than uniform pixels.
  assert test[-1]["bits_per_dim"] == pytest.approx(metrics["bits_per_dim"])
  assert os.path.isfile(os.path.join(workdir, "images", "samples_000030.png"))


@pytest.fixture(scope="module")
def vqvae2_run(tmp_path_factory):
  """A 2-step tiny VQ-VAE-2 run on MNIST: (workdir, final test metrics)."""
  config = _short_run("mnist_vqvae2", "tiny", num_steps=2)
  workdir = str(tmp_path_factory.mktemp("vqvae2"))
  return workdir, stage1.train_and_evaluate(config, workdir)


def _code_bits_per_dim(levels):
  """Code cost under uniform codes: log2 K per code, per MNIST value."""
  return sum(h * w for h, w in levels) * math.log2(32) / (28 * 28)


def test_every_stage1_model_reports_bits_per_dim(tmp_path, vqvae2_run):
  ae_config = _short_run("mnist_vae", "tiny", num_steps=2)
  ae_config.model.bottleneck = "ae"
  metrics = {
      "ae": stage1.train_and_evaluate(ae_config, str(tmp_path / "ae")),
      "vqvae": stage1.train_and_evaluate(
          _short_run("mnist_vqvae", "tiny", num_steps=2),
          str(tmp_path / "vqvae")),
      "vqvae2": vqvae2_run[1]}
  for m in metrics.values():
    assert np.isfinite(m["bits_per_dim"]), m
    assert m["bits_per_dim"] >= m["reconstruction_bits_per_dim"] > 0, m
  ae, vq, vq2 = metrics["ae"], metrics["vqvae"], metrics["vqvae2"]
  # The AE's figure is its reconstruction alone: no code cost, no KL.
  assert ae["bits_per_dim"] == ae["reconstruction_bits_per_dim"]
  assert "kl_bits_per_dim" not in ae and "perplexity" not in ae
  # A VQ-VAE's code costs log2 K per code position.
  assert vq["bits_per_dim"] == pytest.approx(
      vq["reconstruction_bits_per_dim"] + _code_bits_per_dim([(7, 7)]))
  assert vq2["bits_per_dim"] == pytest.approx(
      vq2["reconstruction_bits_per_dim"]
      + _code_bits_per_dim([(7, 7), (14, 14)]))
  for level in ("top", "bottom"):
    assert 1 <= vq2[f"perplexity_{level}"] <= 32
    assert 0 < vq2[f"codes_used_{level}"] <= 1
    assert vq2[f"commitment_loss_{level}"] >= 0
  assert "perplexity" not in vq2 and 1 <= vq["perplexity"] <= 32


def test_vqvae2_run_restores_with_two_code_levels(vqvae2_run):
  workdir, _ = vqvae2_run
  trained = runs.restore_stage1(workdir)
  assert trained.step == 2 and trained.levels == ("top", "bottom")
  assert trained.code_shapes == {"top": (7, 7), "bottom": (14, 14)}
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), np.uint8)
  codes = trained.encode_levels(images)
  assert set(codes) == {"top", "bottom"}
  for level, (h, w) in trained.code_shapes.items():
    assert codes[level].shape == (3, h, w, 1)
    assert codes[level].dtype == jnp.int32
    assert 0 <= int(codes[level].min()) and int(codes[level].max()) < 32
  decoded = trained.decode_levels(codes)
  assert decoded.shape == images.shape and decoded.dtype == jnp.uint8
  # Codes of the decoded images decode to images of the same shape again.
  again = trained.decode_levels(trained.encode_levels(np.asarray(decoded)))
  assert again.shape == images.shape
  assert trained.codebook("top").shape == trained.codebook("bottom").shape \
      == (32, 8)
  # The one-level API names the two-level one instead of guessing a level.
  with pytest.raises(ValueError, match="encode_levels / decode_levels"):
    trained.encode(images)
  with pytest.raises(ValueError, match="code levels"):
    trained.decode(codes["bottom"])
  with pytest.raises(ValueError, match="code levels"):
    trained.code_shape
