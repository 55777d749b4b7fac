"""The stage-1 command line, end to end in a subprocess."""

import glob
import json
import os

from conftest import run_python


def test_train_vqvae_cli_runs_tiny_config(tmp_path, mnist_dir):
  workdir = str(tmp_path / "run")
  result = run_python(["train_vqvae.py", "--config=configs/mnist_vqvae.py:tiny",
                       f"--workdir={workdir}", "--config.train.num_steps=4",
                       "--config.eval.every=2"])
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  test_records = [r for r in records if r["split"] == "test"]
  assert [r["step"] for r in test_records] == [2, 4]
  for key in ("mse", "nmse", "perplexity", "codes_used"):
    assert key in test_records[-1]
  train = [r for r in records if r["split"] == "train"][-1]
  for key in ("loss", "codebook_loss", "commitment_loss", "images_per_sec"):
    assert key in train
  assert glob.glob(os.path.join(workdir, "images", "reconstructions_test_000004.png"))
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))


def test_misspelt_override_fails_with_one_clear_line(tmp_path):
  result = run_python(["train_vqvae.py", "--config=configs/mnist_vqvae.py",
                       f"--workdir={tmp_path}", "--config.train.num_stpes=3"])
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert "--config.train.num_stpes" in lines[0] and "num_steps" in lines[0]
  assert not os.listdir(tmp_path)


def test_missing_data_is_one_clear_line(tmp_path):
  result = run_python(
      ["train_vqvae.py", "--config=configs/mnist_vqvae.py:tiny",
       f"--workdir={tmp_path / 'run'}", f"--config.data.dir={tmp_path / 'none'}"],
      env={"VQJAX_NO_DOWNLOAD": "1"})
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
  assert "VQJAX_DATA_DIR" in lines[0] or "data.dir" in lines[0]


def test_batch_not_divisible_by_devices_is_one_clear_line(tmp_path, mnist_dir):
  result = run_python(
      ["train_vqvae.py", "--config=configs/mnist_vqvae.py:tiny",
       f"--workdir={tmp_path / 'run'}", "--config.train.batch_size=15"],
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert result.returncode == 2
  assert "not divisible by the 2 devices" in result.stderr, result.stderr
