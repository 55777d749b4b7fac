"""Preemption and hard kills: a trainer sent SIGTERM saves at the step it is
on and exits 143; after SIGKILL at any moment (before the first save, between
saves, in the middle of a save) a restart resumes from the latest complete
checkpoint; and the run then ends with the parameters of an uninterrupted
run. For both trainers, through their command lines."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from vqjax import checkpoint, runs

# `sitecustomize` in the subprocesses: SIGKILL the trainer at a save.
# VQJAX_TEST_KILL = "before:N" (before the N-th save writes anything),
# "during:N" (as soon as the N-th save is under way: Orbax writes in the
# background) or "after:N" (once the N-th save is complete).
_HOOK = textwrap.dedent('''
    import os, signal
    _mode = os.environ.get("VQJAX_TEST_KILL")
    if _mode:
      from vqjax import checkpoint as _checkpoint
      _when, _, _n = _mode.partition(":")
      _original, _calls = _checkpoint.Checkpointer.save, [0]
      def _save(self, *args, **kwargs):
        _calls[0] += 1
        hit = _calls[0] == int(_n)
        if hit and _when == "before":
          os.kill(os.getpid(), signal.SIGKILL)
        _original(self, *args, **kwargs)
        if hit and _when == "after":
          self.wait()
        if hit:
          os.kill(os.getpid(), signal.SIGKILL)
      _checkpoint.Checkpointer.save = _save
    if os.environ.get("VQJAX_TEST_SLOW"):  # seconds per batch put on devices
      import time
      from vqjax import parallel as _parallel
      _shard = _parallel.shard
      def _slow_shard(*args, **kwargs):
        time.sleep(float(os.environ["VQJAX_TEST_SLOW"]))
        return _shard(*args, **kwargs)
      _parallel.shard = _slow_shard
    ''')

STEPS = 12
TINY = [f"--config.train.num_steps={STEPS}", "--config.checkpoint.every=4",
        "--config.eval.every=1000", "--config.train.log_every=1",
        "--config.eval.batch_size=500", "--config.checkpoint.max_to_keep=2"]


@pytest.fixture
def hook_dir(tmp_path):
  path = tmp_path / "hook"
  path.mkdir()
  (path / "sitecustomize.py").write_text(_HOOK)
  return str(path)


def _start(script, args, hook_dir, kill=None, slow=None):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (hook_dir, os.environ.get("PYTHONPATH")) if p)}
  env.pop("VQJAX_TEST_KILL", None)
  env.pop("VQJAX_TEST_SLOW", None)
  if kill:
    env["VQJAX_TEST_KILL"] = kill
  if slow:
    env["VQJAX_TEST_SLOW"] = str(slow)
  return subprocess.Popen([sys.executable, script, *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _run(script, args, hook_dir, kill=None, expect=0):
  process = _start(script, args, hook_dir, kill)
  out, err = process.communicate(timeout=600)
  assert process.returncode == expect, err[-3000:]
  return out + err


def _steps(workdir):
  ckpt = checkpoint.Checkpointer(workdir)
  try:
    return sorted(ckpt.all_steps())
  finally:
    ckpt.close()


def _logged_train_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l)["step"] for l in f if '"split": "train"' in l]


def _assert_same_params(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a),
                          jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                               atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_stage1_survives_sigterm_and_sigkill_anywhere(tmp_path, mnist_dir,
                                                      hook_dir):
  args = ["--config=configs/mnist_vqvae.py:tiny", *TINY]
  straight = str(tmp_path / "straight")
  _run("train_vqvae.py", [*args, f"--workdir={straight}"], hook_dir)

  workdir = str(tmp_path / "interrupted")
  run = [*args, f"--workdir={workdir}"]
  # SIGKILL before the first save: nothing saved, the restart starts over.
  _run("train_vqvae.py", run, hook_dir, kill="before:1", expect=-9)
  assert not os.path.isdir(os.path.join(workdir, "checkpoints")) or \
      _steps(workdir) == []
  # SIGKILL once the first save (step 4) is complete: between saves.
  _run("train_vqvae.py", run, hook_dir, kill="after:1", expect=-9)
  assert _steps(workdir) == [4]
  # SIGKILL in the middle of the next save (step 8): step 4 stays the latest
  # complete checkpoint, whatever Orbax had written of step 8.
  _run("train_vqvae.py", run, hook_dir, kill="during:1", expect=-9)
  assert _steps(workdir)[-1] in (4, 8)
  # SIGTERM mid-run (steps slowed to 0.3 s so that it lands before the
  # end): the step in flight finishes, is saved, exit 143.
  process = _start("train_vqvae.py", run, hook_dir, slow=0.3)
  deadline = time.time() + 300
  while not any(s > 9 for s in _logged_train_steps(workdir)):
    assert process.poll() is None and time.time() < deadline, \
        process.communicate()[1][-3000:]
    time.sleep(0.02)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 143, err[-3000:]
  stopped = _steps(workdir)[-1]
  assert 9 < stopped < STEPS and "Stopped by SIGTERM" in err
  # The restart finishes and matches the uninterrupted run.
  _run("train_vqvae.py", run, hook_dir)
  a, b = runs.restore_stage1(workdir), runs.restore_stage1(straight)
  assert a.step == b.step == STEPS
  _assert_same_params(a.variables, b.variables)


def test_prior_resumes_after_sigkill_during_a_save(tmp_path, mnist_dir,
                                                   hook_dir):
  stage1 = str(tmp_path / "stage1")
  _run("train_vqvae.py", ["--config=configs/mnist_vqvae.py:tiny",
                          f"--workdir={stage1}"], hook_dir)
  args = ["--config=configs/mnist_prior.py:tiny", *TINY,
          "--config.eval.num_samples=0", f"--config.vqvae_workdir={stage1}"]
  straight = str(tmp_path / "straight")
  _run("train_prior.py", [*args, f"--workdir={straight}"], hook_dir)
  workdir = str(tmp_path / "interrupted")
  _run("train_prior.py", [*args, f"--workdir={workdir}"], hook_dir,
       kill="during:2", expect=-9)
  assert _steps(workdir)[0] == 4
  _run("train_prior.py", [*args, f"--workdir={workdir}"], hook_dir)
  a, b = runs.restore_prior(workdir), runs.restore_prior(straight)
  assert a.step == b.step == STEPS
  _assert_same_params(a.variables, b.variables)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_sigterm_on_two_processes_saves_one_consistent_checkpoint(
    tmp_path, mnist_dir, hook_dir):
  """Two processes (JAX's runtime on 127.0.0.1), one of them sent SIGTERM:
  both stop at the same step through JAX's preemption sync point, and one
  checkpoint of that step is saved, from which both resume."""
  workdir = str(tmp_path / "multi")
  args = ["--config=configs/mnist_vqvae.py:tiny", "--config.train.num_steps=400",
          "--config.checkpoint.every=1000", "--config.eval.every=1000",
          "--config.train.log_every=1", "--config.eval.batch_size=500",
          f"--workdir={workdir}", "--cpu_devices=1", "--num_processes=2"]
  port = _free_port()
  env_args = [f"--coordinator_address=127.0.0.1:{port}"]
  workers = [_start("train_vqvae.py", [*args, *env_args, f"--process_id={i}"],
                    hook_dir) for i in range(2)]
  deadline = time.time() + 300
  while not any(s >= 5 for s in _logged_train_steps(workdir)):
    assert all(w.poll() is None for w in workers) and time.time() < deadline
    time.sleep(0.05)
  workers[1].send_signal(signal.SIGTERM)
  results = [w.communicate(timeout=300) for w in workers]
  codes = [w.returncode for w in workers]
  assert codes == [143, 143], [err[-2000:] for _, err in results]
  steps = _steps(workdir)
  assert len(steps) == 1 and 5 <= steps[0] < 400
  assert all(f"after step {steps[0]}" in err for _, err in results)
