"""VQ-VAE-2's priors: the bottom prior is causal over the bottom grid and
reads the top codes; both priors train on one stage-1 run and sample in two
stages."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, run_python
from vqjax import evaluation, runs
from vqjax.configs import ConfigError
from vqjax.models import CodePrior
from vqjax.train import prior as prior_lib
from vqjax.train import stage1 as stage1_lib

K, TOP, BOTTOM = 6, 3, 6  # codes; top grid 3x3 -> bottom grid 6x6


def _bottom_prior(seed=0, attention_every=0):
  prior = CodePrior(num_values=K, features=8, num_layers=3, kernel_size=3,
                    head_features=8, top_num_codes=K, top_upsamples=1,
                    cond_features=4, attention_every=attention_every,
                    attention_heads=2)
  top = jax.random.randint(jax.random.PRNGKey(seed), (1, TOP, TOP, 1), 0, K)
  x = jax.random.randint(jax.random.PRNGKey(seed + 1), (1, BOTTOM, BOTTOM, 1),
                         0, K)
  variables = prior.init(jax.random.PRNGKey(3), x, top_codes=top)
  assert set(variables["params"]) == {"pixelcnn", "conditioner"}
  # Attention's output projection starts at zero (the block as identity):
  # open it, so that what the block sees shows in the logits.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: jax.random.normal(jax.random.PRNGKey(4), v.shape) * 0.3
      if "['out']" in jax.tree_util.keystr(path) else v, variables)

  def logits(onehot, top_codes):
    return prior.apply(variables, onehot, top_codes=top_codes,
                       method=CodePrior.logits_from_onehot)
  return logits, jax.nn.one_hot(x, K), top


@pytest.mark.parametrize("attention_every", [0, 2])
def test_bottom_prior_is_causal_over_the_bottom_grid(attention_every):
  logits, onehot, top = _bottom_prior(attention_every=attention_every)
  n = BOTTOM * BOTTOM
  jacobian = jax.jacrev(lambda o: logits(o, top).reshape(n, K))(onehot)
  # [n, K, 1, H, W, 1, K] -> how much output position p depends on input q.
  dependence = np.abs(np.asarray(jacobian)).sum(axis=(1, 2, 5, 6)).reshape(n, n)
  later_or_same = np.triu(np.ones((n, n), bool))
  assert np.all(dependence[later_or_same] == 0)
  assert dependence[n - 1, n - 2] > 0 and dependence[BOTTOM, 0] > 0
  if attention_every:  # attention reaches back to the very first position
    assert np.all(dependence[np.tril(np.ones((n, n), bool), k=-1)] > 0)


@pytest.mark.parametrize("attention_every", [0, 2])
def test_bottom_prior_depends_on_every_top_code(attention_every):
  logits, onehot, top = _bottom_prior(attention_every=attention_every)
  base = np.asarray(logits(onehot, top))
  for i in range(TOP):
    for j in range(TOP):
      changed = top.at[0, i, j, 0].set((top[0, i, j, 0] + 1) % K)
      diff = np.abs(np.asarray(logits(onehot, changed)) - base)
      # The top code at (i, j) covers bottom positions 2i..2i+1, 2j..2j+1.
      assert diff[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2].min() > 0, (i, j)
  # Including the very first bottom position, which has no bottom context.
  assert np.abs(np.asarray(logits(onehot, (top + 1) % K)) - base)[0, 0, 0].min() > 0


@pytest.fixture(scope="module")
def vqvae2_dir(tmp_path_factory):
  from conftest import subset_data_dir
  if subset_data_dir() is None:
    pytest.skip("real MNIST not found: set VQJAX_DATA_DIR")
  os.environ["VQJAX_DATA_DIR"] = subset_data_dir()
  workdir = str(tmp_path_factory.mktemp("vqvae2") / "run")
  config = load_config("mnist_vqvae2", "tiny")
  config.train.num_steps = 2
  config.eval.every = 2
  config.checkpoint.every = 2
  stage1_lib.train_and_evaluate(config, workdir)
  return workdir


@pytest.mark.parametrize("level,match", [
    ("codes", "--config.level=top or --config.level=bottom"),
    ("middle", "does not name a code grid")])
def test_prior_level_must_name_a_code_grid(vqvae2_dir, level, match):
  config = load_config("mnist_vqvae2_prior", "tiny")
  config.vqvae_workdir = vqvae2_dir
  config.level = level
  with pytest.raises(ConfigError, match=match):
    prior_lib.PriorTask(config, vqvae2_dir + "_prior")


def test_clusters_belong_in_the_top_prior(vqvae2_dir):
  config = load_config("mnist_vqvae2_prior", "tiny")
  config.vqvae_workdir = vqvae2_dir
  config.level = "bottom"
  config.model.num_clusters = 4
  with pytest.raises(ConfigError, match="clusters belong in the top"):
    prior_lib.PriorTask(config, vqvae2_dir + "_prior")


def test_bottom_prior_trains_on_bottom_codes_given_top_codes(vqvae2_dir,
                                                              tmp_path):
  config = load_config("mnist_vqvae2_prior", "tiny")
  config.vqvae_workdir = vqvae2_dir
  config.level = "bottom"
  task = prior_lib.PriorTask(config, str(tmp_path))
  assert task.sample_shape == (14, 14, 1)
  from vqjax import data
  test = data.load(config.data, "test")
  codes = task.vqvae.encode_levels(test.images[:5])
  np.testing.assert_array_equal(task.test_data.images[:5], codes["bottom"])
  np.testing.assert_array_equal(task.test_data.conditions[:5], codes["top"])
  batch = task.test_data.batch(np.arange(4))
  assert batch["cond"].shape == (4, 7, 7, 1)


def test_vqvae2_top_and_bottom_priors_sample_in_two_stages(tmp_path, mnist_dir,
                                                           monkeypatch):
  """The whole VQ-VAE-2 pipeline through its command lines."""
  stage1, top, bottom = (str(tmp_path / n) for n in ("vqvae2", "top", "bottom"))
  result = run_python(["train_vqvae.py", "--config=configs/mnist_vqvae2.py:tiny",
                       f"--workdir={stage1}", "--config.train.num_steps=2",
                       "--config.eval.every=2", "--config.checkpoint.every=2"])
  assert result.returncode == 0, result.stderr[-3000:]
  # The top prior conditioned on k-means clusters of the top codes: the
  # two-stage sampler draws a cluster first.
  for level, workdir, clusters in (("top", top, 3), ("bottom", bottom, 0)):
    result = run_python(["train_prior.py",
                         "--config=configs/mnist_vqvae2_prior.py:tiny",
                         f"--workdir={workdir}", f"--config.vqvae_workdir={stage1}",
                         f"--config.level={level}",
                         f"--config.model.num_clusters={clusters}"])
    assert result.returncode == 0, result.stderr[-3000:]
  result = run_python(["sample.py", f"--workdir={top}", "--num=4"])
  assert result.returncode == 2 and "--top_workdir" in result.stderr
  result = run_python(["sample.py", f"--workdir={bottom}",
                       f"--top_workdir={top}", "--num=16", "--per_image=2"])
  assert result.returncode == 0, result.stderr[-3000:]
  out = os.path.join(bottom, "samples")
  with np.load(os.path.join(out, "hierarchical_samples_step000004.npz")) as codes:
    assert codes["top"].shape == (16, 7, 7, 1)
    assert codes["bottom"].shape == (16, 14, 14, 1)
    assert codes["top"].max() < 32 and codes["bottom"].max() < 32
  assert os.path.exists(os.path.join(out, "hierarchical_samples_step000004.png"))
  assert np.load(os.path.join(out, "same_top_new_bottom_step000004.npy")).shape \
      == (2, 8, 14, 14, 1)
  assert os.path.exists(os.path.join(out, "same_top_new_bottom_step000004.png"))
  top_prior, bottom_prior = runs.restore_prior(top), runs.restore_prior(bottom)
  assert len(top_prior.cluster_counts) == 3 and bottom_prior.num_classes == 0
  bound = evaluation.likelihood_bound(bottom_prior.vqvae,
                                      (top_prior, bottom_prior))
  # Reconstruction bits plus both priors' logged test NLLs (4 training steps
  # leave them near uniform, so only the arithmetic is checked).
  from vqjax import metric_writer
  nats = sum(metric_writer.read_test_metrics(p.workdir, p.step)["nll_nats"]
             * np.prod(p.sample_shape) for p in (top_prior, bottom_prior))
  np.testing.assert_allclose(
      bound["with the PixelCNN priors"],
      bound["reconstruction only"] + nats / (28 * 28 * np.log(2.0)),
      rtol=1e-6)
  assert bound["with the PixelCNN priors"] > bound["reconstruction only"]
  monkeypatch.setenv("VQJAX_CACHE_DIR", str(tmp_path / "cache"))
  report = evaluation.evaluate_run(bottom, num=8, classifier_steps=2,
                                   top_workdir=top)
  assert {"prior samples (T=1)", "bottom prior on test top codes (T=1)",
          "test reconstructions"} <= set(report["sets"])
  assert report["sets"]["bottom prior on test top codes (T=1)"][
      "num_images"] == 8
  # Repeats: seeds 0 and 1, each the report a single run with that seed gives.
  second = evaluation.evaluate_run(bottom, num=8, seed=1, top_workdir=top)
  both = evaluation.evaluate_run(bottom, num=8, top_workdir=top, repeats=2)
  assert both["repeats"] == {"count": 2, "seeds": [0, 1]}
  for name, score in both["sets"].items():
    each = [report["sets"][name]["fid"], second["sets"][name]["fid"]]
    np.testing.assert_allclose(score["fid_each"], each, rtol=1e-5)
    np.testing.assert_allclose(score["fid"], np.mean(each), rtol=1e-5)
    np.testing.assert_allclose(score["fid_std"], np.std(each, ddof=1),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(score["inception_score"], np.mean(
        [r["sets"][name]["inception_score"] for r in (report, second)]),
        rtol=1e-5)
  assert "+-" in evaluation.format_report(both)
  assert "+-" not in evaluation.format_report(report)


def test_cifar_shaped_vqvae2_trains_on_colour_images(tmp_path):
  """32x32x3 in the exact CIFAR-10 format: 8x8 bottom, 4x4 top codes."""
  from test_data import _write_cifar
  from vqjax import configs as vqjax_configs
  from vqjax import data
  _write_cifar(tmp_path / "cifar")
  config = load_config("cifar10_vqvae2")
  vqjax_configs.tiny_vqvae(config)
  config.data.dir = str(tmp_path / "cifar")
  config.train.batch_size = 4
  config.train.num_steps = 2
  config.eval.every = config.checkpoint.every = 2
  config.eval.batch_size = 4
  stage1 = str(tmp_path / "vqvae2")
  metrics = stage1_lib.train_and_evaluate(config, stage1)
  assert np.isfinite(metrics["bits_per_dim"])
  vqvae = runs.restore_stage1(stage1)
  assert vqvae.code_shapes == {"top": (4, 4), "bottom": (8, 8)}
  images = data.load(config.data, "test").images
  codes = vqvae.encode_levels(images)
  assert codes["top"].shape == (3, 4, 4, 1)
  assert codes["bottom"].shape == (3, 8, 8, 1)
  assert vqvae.decode_levels(codes).shape == (3, 32, 32, 3)
