"""Orbax round trips and exact resumption of an interrupted run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from vqjax import checkpoint, runs
from vqjax.models import build, to_float
from vqjax.train import stage1


def _assert_trees_equal(a, b, **tol):
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for (path, x), y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=str(path), **tol)


def test_save_restore_round_trip(tmp_path, mnist_dir):
  task = stage1.Stage1Task(load_config("mnist_vqvae", "tiny"))
  batch = {"image": task.train_data.images[:1]}
  state = task.create_train_state(jax.random.PRNGKey(0), batch)
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
  ckpt.save(7, state, {"note": "hello"})
  ckpt.wait()
  fresh = task.create_train_state(jax.random.PRNGKey(1), batch)
  restored, meta, step = ckpt.restore(fresh)
  ckpt.close()
  assert step == 7 and meta == {"note": "hello"}
  _assert_trees_equal(restored.params, state.params, rtol=0, atol=0)
  _assert_trees_equal(restored.model_state, state.model_state, rtol=0, atol=0)
  _assert_trees_equal(restored.opt_state, state.opt_state, rtol=0, atol=0)


def test_resumed_run_matches_uninterrupted_run(tmp_path, mnist_dir):
  config = load_config("mnist_vqvae", "tiny")  # 6 steps, checkpoint every 3
  straight = str(tmp_path / "straight")
  stage1.train_and_evaluate(config, straight)

  resumed = str(tmp_path / "resumed")
  first_half = load_config("mnist_vqvae", "tiny")
  first_half.train.num_steps = 3
  stage1.train_and_evaluate(first_half, resumed)
  assert checkpoint.Checkpointer(resumed).latest_step() == 3
  stage1.train_and_evaluate(config, resumed)

  a = runs.restore_stage1(straight)
  b = runs.restore_stage1(resumed)
  assert a.step == b.step == 6
  _assert_trees_equal(a.variables, b.variables, rtol=1e-6, atol=1e-7)


def test_resuming_with_another_architecture_is_a_clear_error(tmp_path, mnist_dir):
  config = load_config("mnist_vqvae", "tiny")
  config.train.num_steps = 3
  stage1.train_and_evaluate(config, str(tmp_path))
  config.model.num_hiddens = 32
  with pytest.raises(checkpoint.CheckpointError, match="model.num_hiddens=16"):
    stage1.train_and_evaluate(config, str(tmp_path))
  assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 3  # kept


def test_restore_from_a_folder_that_is_not_a_run(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="not a vqjax run"):
    runs.restore_stage1(str(tmp_path))


@pytest.mark.parametrize("first,second", [("xla_cpu", "xla"), ("xla", "xla_cpu")])
def test_run_resumes_with_other_kernels_and_same_loss(tmp_path, mnist_dir,
                                                      first, second):
  """The kernel choice is not architecture: a run trained with one resumes
  with the other, and both compute the same loss on a batch."""
  config = load_config("mnist_vqvae", "tiny")
  config.train.num_steps = 3
  config.model.kernels = first
  stage1.train_and_evaluate(config, str(tmp_path))
  config.train.num_steps = 6
  config.model.kernels = second
  stage1.train_and_evaluate(config, str(tmp_path))
  assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 6

  run = runs.restore_stage1(str(tmp_path))
  x = to_float(np.asarray(task_images(config)[:8]))

  def loss(variables, kernels_name):
    config.model.kernels = kernels_name
    model = build.stage1(config, out_channels=1)
    out = model.apply(variables, x)
    return jnp.mean(jnp.square(out["reconstruction"] - x)) + out["loss"]

  losses = [float(jax.jit(loss, static_argnums=1)(run.variables, k))
            for k in ("xla", "xla_cpu")]
  assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def task_images(config):
  from vqjax import data  # pylint: disable=g-import-not-at-top
  return data.load(config.data, "test").images
