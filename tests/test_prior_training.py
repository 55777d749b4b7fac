"""Prior training that generalises: the parameters' moving average (EMA),
dropout and label dropout (for classifier-free guidance), exact under resume
and on any device count; the saved run restores the average."""

import os
import textwrap

import jax
import numpy as np
import pytest

from conftest import REPO, load_config, run_python
from vqjax import data, runs
from vqjax.checkpoint import CheckpointError
from vqjax.configs import ConfigError
from vqjax.train import loop
from vqjax.train import prior as prior_lib

V = 5


def _datasets():
  """Random 4x4 code grids with labels: (train, test, V)."""
  rng = np.random.default_rng(0)
  make = lambda n: data.Dataset(
      name="codes", images=rng.integers(0, V, (n, 4, 4, 1)).astype(np.int16),
      labels=rng.integers(0, 3, n).astype(np.int32), num_classes=3)
  return make(64), make(20), V


def _config(num_steps, ema_decay=0.9, dropout=0.3, attention_every=1,
            label_dropout=0.5):
  config = load_config("mnist_prior", "tiny")
  config.model.label_dropout = label_dropout
  config.vqvae_workdir = ""
  config.model.attention_every = attention_every
  config.model.attention_heads = 2
  config.model.dropout = dropout
  config.model.conditional = True
  config.train.ema_decay = ema_decay
  config.train.cosine_decay = False  # the same schedule for 2 and 4 steps
  config.train.num_steps = num_steps
  config.train.log_every = 1
  config.eval.every = config.checkpoint.every = 2
  config.eval.num_samples = 0
  return config


def _train(config, workdir):
  datasets = _datasets()
  return loop.train_and_evaluate(
      lambda: prior_lib.PriorTask(config, workdir, datasets), config, workdir)


def _state(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
             if s.isdigit())
  with ocp.StandardCheckpointer() as reader:
    return reader.restore(os.path.join(workdir, "checkpoints", str(step),
                                       "state"))


def test_ema_and_dropout_are_exact_under_resume_and_restore_the_average(
    tmp_path):
  whole, halves = str(tmp_path / "whole"), str(tmp_path / "halves")
  _train(_config(4), whole)
  _train(_config(2), halves)
  _train(_config(4), halves)  # resumes at step 2
  a, b = _state(whole), _state(halves)
  for name in ("params", "ema_params", "opt_state"):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a[name]),
                            jax.tree_util.tree_leaves(b[name])):
      np.testing.assert_array_equal(x, y, err_msg=f"{name}{path}")
  # The average is not the last parameters, and it is what a run restores.
  leaves = lambda t: jax.tree_util.tree_leaves(t)
  assert any(np.abs(x - y).max() > 0
             for x, y in zip(leaves(a["params"]), leaves(a["ema_params"])))
  restored = runs.restore_prior(whole)
  for x, y in zip(leaves(restored.variables["params"]),
                  leaves(a["ema_params"])):
    np.testing.assert_array_equal(x, y)
  # A run with an average resumes only with one; with label dropout only
  # with label dropout (its model has the extra "no label" class).
  with pytest.raises(ConfigError, match="ema_decay"):
    _train(_config(6, ema_decay=0.0), whole)
  with pytest.raises(CheckpointError, match="model.label_dropout=0.5"):
    _train(_config(6, label_dropout=0.0), whole)
  assert restored.null_label == 3 and restored.num_classes == 3
  assert restored.model.num_classes == 4
  from vqjax import generate
  _, guided = generate.prior_samples(restored, jax.random.PRNGKey(0), 4,
                                     guidance=2.0)
  assert guided.shape == (4, 4, 4, 1) and guided.max() < V


def test_label_dropout_trains_each_example_on_its_label_or_on_none(tmp_path):
  """Each training example's NLL is the model's with its label or, with
  probability p, with the "no label" class; the test NLL keeps the label."""
  import jax.numpy as jnp
  from vqjax import parallel
  config = _config(2, dropout=0.0, attention_every=0, label_dropout=0.5)
  task = prior_lib.PriorTask(config, str(tmp_path), _datasets())
  batch = next(data.train_batches(task.train_data, 64, seed=0))
  params = task.create_train_state(
      jax.random.PRNGKey(0), {k: v[:1] for k, v in batch.items()}).params
  one = lambda tree: jax.tree.map(lambda x: jnp.asarray(x)[None], tree)
  nll = jax.pmap(lambda p, b: task._nll(task.model, p, b, jnp.asarray(7)),
                 axis_name=parallel.AXIS)(one(params), one(batch))[0]
  x = jnp.asarray(batch["image"], jnp.int32)
  with_label, without = (task._sum_nll(task.model.apply(
      {"params": params}, x, labels), x) for labels in
      (batch["label"], jnp.full((64,), task.null_label)))
  dropped = np.isclose(nll, without, rtol=1e-6)
  kept = np.isclose(nll, with_label, rtol=1e-6)
  assert not np.any(np.isclose(with_label, without, rtol=1e-6))
  assert np.all(dropped ^ kept) and 16 <= dropped.sum() <= 48
  metrics = _train(config, str(tmp_path / "run"))
  assert np.isfinite(metrics["bits"])
  with pytest.raises(ConfigError, match="label_dropout=1.0 must be in"):
    prior_lib.PriorTask(_config(2, label_dropout=1.0), "", _datasets())
  unlabelled = _config(2, label_dropout=0.3)
  unlabelled.model.conditional = False
  with pytest.raises(ConfigError, match="drops the class or cluster"):
    prior_lib.PriorTask(unlabelled, "", _datasets())
  unguidable = _config(2, label_dropout=0.0)
  unguidable.sample.guidance = 1.0
  with pytest.raises(ConfigError, match="sample.guidance=1.0 needs"):
    prior_lib.PriorTask(unguidable, "", _datasets())


def test_without_ema_the_state_and_the_run_hold_the_parameters(tmp_path):
  workdir = str(tmp_path / "plain")
  metrics = _train(_config(2, ema_decay=0.0, dropout=0.0, attention_every=0,
                           label_dropout=0.0), workdir)
  assert np.isfinite(metrics["bits"])
  state = _state(workdir)
  assert state.get("ema_params") is None
  restored = runs.restore_prior(workdir)
  for x, y in zip(jax.tree_util.tree_leaves(restored.variables["params"]),
                  jax.tree_util.tree_leaves(state["params"])):
    np.testing.assert_array_equal(x, y)


DEVICES_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from flax import jax_utils
    from test_prior_training import _config, _datasets
    from vqjax import data, parallel
    from vqjax.train import guard
    from vqjax.train.prior import PriorTask

    assert jax.local_device_count() == 2, jax.devices()
    task = PriorTask(_config(3), "/nonexistent", _datasets())
    batches = data.train_batches(task.train_data, 8, seed=0)
    steps = [next(batches) for _ in range(3)]
    state0 = task.create_train_state(jax.random.PRNGKey(0),
                                     {k: v[:1] for k, v in steps[0].items()})

    def run(devices):
      step = jax.pmap(guard.skip_nonfinite_updates(task.train_step),
                      axis_name=parallel.AXIS, devices=devices)
      shard = lambda b: jax.tree.map(
          lambda x: x.reshape((len(devices), -1) + x.shape[1:]), b)
      state = jax_utils.replicate(state0, devices=devices)
      for batch in steps:
        state, _ = step(state, shard(batch))
      return parallel.unreplicate(state)

    one, two = run(jax.devices()[:1]), run(jax.devices()[:2])
    for name in ("params", "ema_params", "opt_state"):
      for (path, x), y in zip(
          jax.tree_util.tree_leaves_with_path(getattr(one, name)),
          jax.tree_util.tree_leaves(getattr(two, name))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4,
                                   atol=1e-6, err_msg=f"{name}{path}")
    print("EQUAL")
""")


def test_two_devices_draw_the_dropout_masks_of_one_and_average_alike():
  """... and drop the labels of one (`_config` has label dropout)."""
  result = run_python(["-c", DEVICES_SCRIPT], env={
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
      "PYTHONPATH": REPO + "/src"}, timeout=900)
  assert "EQUAL" in result.stdout, result.stdout + result.stderr[-3000:]
