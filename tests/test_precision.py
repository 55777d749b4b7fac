"""Mixed precision: `model.dtype=bfloat16` computes activations in bfloat16
and keeps parameters, optimizer state, the quantizer and losses in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from vqjax import data, parallel
from vqjax import quantizer as vq
from vqjax.models import VectorQuantizer
from vqjax.train import prior, stage1


def test_quantizer_outputs_are_float32_whatever_the_input_dtype():
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 4), jnp.bfloat16)
  module = VectorQuantizer(num_codes=8, code_dim=4, use_ema=True)
  variables = module.init(jax.random.PRNGKey(1), z)
  out, state = module.apply(variables, z, train=True, mutable=["vq_ema"])
  for key in ("quantized", "codebook_loss", "commitment_loss", "loss"):
    assert out[key].dtype == jnp.float32, key
  for leaf in jax.tree_util.tree_leaves(state):
    assert leaf.dtype in (jnp.float32, jnp.int32)
  codebook = variables["vq_ema"]["codebook"]
  assert vq.squared_distances(z, codebook).dtype == jnp.float32
  functional = vq.quantize(z, codebook)
  assert functional["quantized"].dtype == jnp.float32
  assert functional["commitment_loss"].dtype == jnp.float32


def _one_step(task, batch):
  """One data-parallel train step (1 device) from a fixed initial state."""
  state = task.create_train_state(jax.random.PRNGKey(0),
                                  {k: v[:1] for k, v in batch.items()})
  step = jax.pmap(task.train_step, axis_name=parallel.AXIS,
                  devices=jax.devices()[:1])
  sharded = jax.tree.map(lambda x: x[None], batch)
  new_state, metrics = step(parallel.replicate(state), sharded)
  return parallel.unreplicate(new_state), parallel.unreplicate(metrics)


def _assert_float32_state(state):
  for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32


def test_bfloat16_vqvae_step_is_finite_and_close_to_float32(mnist_dir):
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = load_config("mnist_vqvae", "tiny")
    config.model.dtype = dtype
    task = stage1.Stage1Task(config)
    batch = next(data.train_batches(task.train_data, 16, seed=0))
    state, metrics = _one_step(task, batch)
    _assert_float32_state(state)
    losses[dtype] = metrics
  for key in ("loss", "nmse", "commitment_loss"):
    assert np.isfinite(losses["bfloat16"][key])
    assert losses["bfloat16"][key] == pytest.approx(losses["float32"][key],
                                                    rel=0.05), key


def test_bfloat16_pixelcnn_step_is_finite_and_close_to_float32():
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 16, (32, 7, 7, 1)).astype(np.int16)
  fake = data.Dataset(name="codes", images=codes,
                      labels=np.zeros(32, np.int32), num_classes=0)
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = load_config("mnist_prior", "tiny")
    config.model.dtype = dtype
    task = prior.PriorTask(config, workdir="", datasets=(fake, fake, 16))
    logits = task.model.apply(
        {"params": task.create_train_state(
            jax.random.PRNGKey(0), {"image": codes[:1]}).params},
        jnp.asarray(codes[:2], jnp.int32))
    assert logits.dtype == jnp.float32
    state, metrics = _one_step(task, {"image": codes[:16],
                                      "label": fake.labels[:16]})
    _assert_float32_state(state)
    losses[dtype] = metrics["loss"]
  assert np.isfinite(losses["bfloat16"])
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.02)
