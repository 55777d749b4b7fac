"""Multi-host training on JAX's own runtime: two processes on 127.0.0.1, one
CPU device each, train what one process with two devices trains."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from conftest import REPO
from vqjax import runs

TINY = ["--config=configs/mnist_vqvae.py:tiny", "--config.train.num_steps=2",
        "--config.eval.every=2", "--config.checkpoint.every=2",
        "--config.eval.batch_size=300"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(args, env):
  return subprocess.Popen([sys.executable, "train_vqvae.py", *args], cwd=REPO,
                          env={**os.environ, "XLA_FLAGS": "", **env},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _finish(process, timeout=600):
  out, err = process.communicate(timeout=timeout)
  assert process.returncode == 0, err[-3000:]
  return out, err


def test_two_processes_train_like_one_process_with_two_devices(tmp_path,
                                                               mnist_dir):
  """Two processes train 2 steps and checkpoint, are restarted and resume
  to step 3 (Orbax restoring in both, the data order going on); one process
  with two devices trains the 3 steps straight."""
  multi = str(tmp_path / "multi")
  for steps in (2, 3):
    port = _free_port()
    workers = [_launch([*TINY, f"--workdir={multi}", "--cpu_devices=1",
                        f"--config.train.num_steps={steps}",
                        f"--coordinator_address=127.0.0.1:{port}",
                        "--num_processes=2", f"--process_id={i}"], {})
               for i in range(2)]
    for worker in workers:
      _finish(worker)
  single = str(tmp_path / "single")
  _finish(_launch([*TINY, f"--workdir={single}", "--cpu_devices=2",
                   "--config.train.num_steps=3"], {}))

  a, b = runs.restore_stage1(multi), runs.restore_stage1(single)
  assert a.step == b.step == 3
  leaves_a = jax.tree_util.tree_leaves_with_path(a.variables)
  leaves_b = jax.tree_util.tree_leaves(b.variables)
  assert len(leaves_a) == len(leaves_b)
  for (path, x), y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4,
                               atol=2e-5, err_msg=str(path))
  # Process 0 alone writes the run's files.
  with open(os.path.join(multi, "metrics.jsonl")) as f:
    tests = [line for line in f if '"split": "test"' in line]
  assert len(tests) == 2  # Steps 2 and 3, each written once.


def test_incomplete_multihost_flags_are_one_clear_line(tmp_path):
  process = _launch([*TINY, f"--workdir={tmp_path}", "--num_processes=2"], {})
  out, err = process.communicate(timeout=300)
  assert process.returncode == 2
  assert err.strip().splitlines()[-1] == (
      "error: A multi-host launch needs --coordinator_address, "
      "--num_processes and --process_id together; missing: "
      "--coordinator_address, --process_id."), err[-2000:]
