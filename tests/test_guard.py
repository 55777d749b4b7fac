"""A non-finite step changes nothing: `guard.skip_nonfinite_updates` keeps the
whole train state (parameters, optimizer, EMA codebook, decoder variance) as
it was, and the loop stops after `train.max_bad_steps` of them in a row with
its good checkpoints intact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from vqjax import checkpoint, data, parallel
from vqjax.train import guard, prior, stage1


def _run(task, state, batches, step_fn=None):
  """Applies the guarded step to each batch; returns the host state and the
  per-step `skipped_steps` flags."""
  p_step = parallel.data_parallel(
      guard.skip_nonfinite_updates(step_fn or task.train_step))
  state = parallel.replicate(state)
  skipped = []
  for batch in batches:
    state, metrics = p_step(state, parallel.shard(batch))
    skipped.append(float(parallel.unreplicate(metrics[guard.SKIPPED])))
  return parallel.unreplicate(state), skipped


def _assert_same_state(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def _batches(dataset, size, num, seed=0):
  it = data.train_batches(dataset, size, seed, read_threads=0,
                          prefetch_batches=0)
  return [next(it) for _ in range(num)]


def test_a_nan_batch_changes_nothing_in_stage1_with_ema(mnist_dir):
  """The NaN batch's step is skipped; the run ends exactly where a run that
  never saw that batch ends, EMA codebook and decoder variance included."""
  config = load_config("mnist_vqvae", "tiny")
  task = stage1.Stage1Task(config)
  good = [{**b, "image": b["image"].astype(np.float32)}
          for b in _batches(task.train_data, 16, 3)]
  nan = {**good[0], "image": np.full_like(good[0]["image"], np.nan)}
  state = task.create_train_state(jax.random.PRNGKey(0),
                                  {k: v[:1] for k, v in good[0].items()})
  assert "vq_ema" in state.model_state
  with_nan, skipped = _run(task, state, [good[0], nan, good[1], good[2]])
  without, skipped_none = _run(task, state, good)
  assert skipped == [0.0, 1.0, 0.0, 0.0] and skipped_none == [0.0] * 3
  _assert_same_state(with_nan, without)
  assert int(with_nan.step) == 3


def test_nan_gradients_change_nothing_in_the_prior(mnist_dir):
  """A step whose update is NaN (injected into the new parameters, as NaN
  gradients would make them) leaves the prior's state as it was."""
  config = load_config("mnist_pixelcnn", "cpu")
  config.model.features, config.model.num_layers = 8, 1
  config.model.head_features = 8
  task = prior.PriorTask(config, workdir="")
  batches = _batches(task.train_data, 4, 3)
  for b in batches:
    b["image"] = b["image"][:, :8, :8]  # Small grids: a fast test.
    b["poison"] = np.ones(4, np.float32)
  bad = {**batches[0], "poison": np.full(4, np.nan, np.float32)}

  def poisoned_step(state, batch):
    state, metrics = task.train_step(state, batch)
    scale = batch["poison"][0]
    return state.replace(params=jax.tree_util.tree_map(
        lambda p: p * scale, state.params)), metrics

  state = task.create_train_state(jax.random.PRNGKey(0),
                                  {k: v[:1] for k, v in batches[0].items()})
  with_nan, skipped = _run(task, state, [batches[0], bad, batches[1]],
                           poisoned_step)
  without, _ = _run(task, state, batches[:2], poisoned_step)
  assert skipped == [0.0, 1.0, 0.0]
  _assert_same_state(with_nan, without)


def test_a_run_of_bad_steps_stops_and_keeps_the_good_checkpoints(tmp_path,
                                                                 mnist_dir):
  """Resumed with an absurd learning rate (the issue's 1e30), every update
  soon overflows: the steps are skipped, counted, and after max_bad_steps in
  a row the run stops naming the step; no non-finite state is saved, so the
  checkpoint it resumed from is still the latest and still finite."""
  config = load_config("mnist_vqvae", "tiny")
  workdir = str(tmp_path)
  stage1.train_and_evaluate(config, workdir)  # 6 steps, checkpoints 3 and 6.
  config.train.num_steps = 40
  config.train.learning_rate = 1e30
  config.train.max_bad_steps = 5
  config.checkpoint.every = 2
  with pytest.raises(guard.TrainingError, match="steps in a row"):
    stage1.train_and_evaluate(config, workdir)
  ckpt = checkpoint.Checkpointer(workdir)
  for step in ckpt.all_steps():
    variables, _, _ = ckpt.restore_variables(step)
    assert all(np.isfinite(x).all()
               for x in jax.tree_util.tree_leaves(variables)), step
  ckpt.close()


def test_a_non_finite_state_is_never_saved(tmp_path):
  state = {"params": {"w": jnp.array([1.0, jnp.nan])}}
  with pytest.raises(guard.TrainingError, match="not finite"):
    guard.check_finite(state, 7, str(tmp_path))
  guard.check_finite({"params": {"w": jnp.ones(2)}}, 7, str(tmp_path))
