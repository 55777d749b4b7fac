"""Stage 2: the prior's link to its VQ-VAE, and the whole pipeline end to end."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import load_config, run_python
from vqjax import checkpoint, runs as runs_lib
from vqjax.train import prior as prior_lib
from vqjax.train import stage1 as stage1_lib


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny VQ-VAE (K=32), a prior on it, and a second VQ-VAE with K=16."""
  from conftest import subset_data_dir
  if subset_data_dir() is None:
    pytest.skip("real MNIST not found: set VQJAX_DATA_DIR")
  os.environ["VQJAX_DATA_DIR"] = subset_data_dir()
  root = tmp_path_factory.mktemp("stage2")
  vqvae_dir, other_dir, prior_dir = (str(root / n) for n in ("vqvae", "other", "prior"))
  config = load_config("mnist_vqvae", "tiny")
  config.train.num_steps = 3
  stage1_lib.train_and_evaluate(config, vqvae_dir)
  other = load_config("mnist_vqvae", "tiny")
  other.train.num_steps = 2
  other.quantizer.num_codes = 16
  stage1_lib.train_and_evaluate(other, other_dir)
  prior_config = load_config("mnist_prior", "tiny")
  prior_config.vqvae_workdir = vqvae_dir
  prior_config.eval.num_samples = 0
  metrics = prior_lib.train_and_evaluate(prior_config, prior_dir)
  return {"vqvae": vqvae_dir, "other": other_dir, "prior": prior_dir,
          "prior_config": prior_config, "metrics": metrics}


def test_prior_checkpoint_records_and_restores_its_vqvae(runs):
  restored = runs_lib.restore_prior(runs["prior"])
  assert restored.vqvae.workdir == os.path.abspath(runs["vqvae"])
  assert restored.vqvae.step == 3
  meta, _ = checkpoint.Checkpointer(runs["prior"]).restore_meta()
  assert meta["vqvae"]["step"] == 3
  assert meta["vqvae"]["config"]["quantizer"]["num_codes"] == 32
  assert meta["num_values"] == 32 and meta["grid_shape"] == [7, 7, 1]
  # The codes the prior trained on are those of the linked VQ-VAE.
  with np.load(os.path.join(runs["prior"], "codes_test.npz")) as cached:
    codes = cached["codes"]
  from vqjax import data
  test = data.load(runs["prior_config"].data, "test")
  np.testing.assert_array_equal(codes[:50],
                                restored.vqvae.encode(test.images[:50]))


def test_prior_reports_nll_against_uniform_baseline(runs):
  metrics = runs["metrics"]
  assert metrics["uniform_bits"] == pytest.approx(5.0)  # log2(32)
  assert 0 < metrics["bits"] < 6
  assert metrics["nll_nats"] == pytest.approx(metrics["bits"] * np.log(2))


def test_prior_pointed_at_another_vqvae_is_a_clear_error(runs):
  with pytest.raises(checkpoint.CheckpointError, match=r"K=32 .* K=16"):
    runs_lib.restore_prior(runs["prior"], vqvae_workdir=runs["other"])
  resumed = load_config("mnist_prior", "tiny")
  resumed.vqvae_workdir = runs["other"]
  with pytest.raises(checkpoint.CheckpointError, match="K=16"):
    prior_lib.train_and_evaluate(resumed, runs["prior"])
  assert checkpoint.Checkpointer(runs["prior"]).latest_step() == 4  # kept


def test_pipeline_end_to_end_on_mnist(tmp_path, mnist_dir):
  vqvae_dir, prior_dir = str(tmp_path / "vqvae"), str(tmp_path / "prior")
  # On the XLA:CPU kernels a CPU run picks by default (`tiny` uses Flax's).
  result = run_python(["train_vqvae.py", "--config=configs/mnist_vqvae.py:tiny",
                       f"--workdir={vqvae_dir}", "--config.model.kernels=auto"])
  assert result.returncode == 0, result.stderr[-3000:]
  result = run_python(["train_prior.py", "--config=configs/mnist_prior.py:tiny",
                       f"--workdir={prior_dir}",
                       f"--config.vqvae_workdir={vqvae_dir}",
                       "--config.model.conditional=True",
                       "--config.model.kernels=auto"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.exists(os.path.join(prior_dir, "images", "samples_000004.png"))
  result = run_python(["sample.py", f"--workdir={prior_dir}", "--num=10"])
  assert result.returncode == 0, result.stderr[-3000:]
  out = os.path.join(prior_dir, "samples")
  for mode in ("prior_samples", "class_conditional", "random_codes",
               "codes_near_test"):
    assert os.path.exists(os.path.join(out, f"{mode}_step000004.png")), mode
    assert os.path.exists(os.path.join(out, f"{mode}_step000004.npy")), mode
  samples = np.load(os.path.join(out, "prior_samples_step000004.npy"))
  assert samples.shape == (10, 7, 7, 1) and samples.max() < 32
  assert np.load(os.path.join(
      out, "class_conditional_step000004.npy")).shape == (10, 7, 7, 1)
  with Image.open(os.path.join(out, "prior_samples_step000004.png")) as grid:
    assert grid.size[0] >= 4 * 28 * 3  # 4 columns of 3x enlarged 28x28 images
  result = run_python(["evaluate.py", f"--workdir={prior_dir}", "--num=20",
                       "--classifier_steps=10"],
                      env={"VQJAX_CACHE_DIR": str(tmp_path / "cache")})
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(prior_dir, "evaluation.json")) as f:
    report = json.load(f)
  assert 0 <= report["classifier"]["test_accuracy"] <= 1
  assert set(report["sets"]) == {"prior samples (T=1)", "random codes",
                                 "test reconstructions",
                                 "train images (floor)", "test images"}
  for score in report["sets"].values():
    assert np.isfinite(score["fid"]) and score["fid"] >= -1e-6
    assert 1 <= score["inception_score"] <= 10 + 1e-6
    assert sum(score["class_histogram"]) == pytest.approx(1, abs=1e-3)
  assert "FID" in result.stdout
  records = [json.loads(l) for l in open(os.path.join(prior_dir, "metrics.jsonl"))]
  assert any(r["split"] == "test" and "bits" in r for r in records)


def test_cluster_conditioned_prior_trains_samples_and_pays_for_its_cluster(
    runs, tmp_path):
  from vqjax import clusters, configs, generate
  prior_dir = str(tmp_path / "clustered")
  config = load_config("mnist_prior", "tiny")
  config.vqvae_workdir = runs["vqvae"]
  config.model.num_clusters = 3
  config.eval.num_samples = 2
  metrics = prior_lib.train_and_evaluate(config, prior_dir)
  meta, _ = checkpoint.Checkpointer(prior_dir).restore_meta()
  assert meta["num_clusters"] == meta["num_classes"] == 3
  with np.load(os.path.join(prior_dir, clusters.CLUSTERS_FILE)) as cached:
    counts, test_labels = cached["counts"], cached["labels_test"]
  assert meta["cluster_counts"] == counts.tolist()
  assert sum(counts) == len(np.load(os.path.join(
      prior_dir, "codes_train.npz"))["codes"])
  # The cluster's cost, -log p(c) of each test image, is part of the bits.
  expected = -np.mean(clusters.log_probs(counts)[test_labels]) / np.log(2) / 49
  assert metrics["cluster_bits"] == pytest.approx(expected, rel=1e-4)
  assert metrics["bits"] > metrics["cluster_bits"] > 0
  restored = runs_lib.restore_prior(prior_dir)
  assert restored.model.num_classes == 3
  np.testing.assert_array_equal(restored.cluster_counts, counts)
  pictures, samples = generate.prior_samples(restored, jax.random.PRNGKey(0), 4)
  assert samples.shape == (4, 7, 7, 1) and pictures.shape == (4, 28, 28, 1)
  assert os.path.exists(os.path.join(prior_dir, "images",
                                     "samples_000004.png"))
  out = str(tmp_path / "samples")
  generate.write_all(restored, out, num=4)
  # A row of 2 for each of the 2 largest clusters.
  assert np.load(os.path.join(
      out, "cluster_conditional_step000004.npy")).shape == (4, 7, 7, 1)
  # Resuming with another number of clusters is refused, the run kept.
  config.model.num_clusters = 4
  with pytest.raises(checkpoint.CheckpointError,
                     match="model.num_clusters=3"):
    prior_lib.train_and_evaluate(config, prior_dir)
  assert checkpoint.Checkpointer(prior_dir).latest_step() == 4
  config.model.num_clusters = 3
  config.model.conditional = True
  with pytest.raises(configs.ConfigError, match="instead of labels"):
    prior_lib.PriorTask(config, str(tmp_path / "both"))
