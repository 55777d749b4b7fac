"""`vqjax.xla_cpu`'s layers compute what Flax's own layers compute, gradients
too, on the same parameters; models built with them (`vqjax.models.build`)
are the same functions; and its process settings stay off non-CPU runs."""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import xla_cpu
from vqjax.models import build
from vqjax.models.vqvae import VQVAE
from vqjax.xla_cpu import convolutions, process
from vqjax.xla_cpu import quantizer as cpu_quantizer

TOL = dict(rtol=1e-4, atol=1e-4)


def _computed_by_xla_cpu(fn, *args) -> bool:
  """Whether tracing `fn(*args)` went through the XLA:CPU formulations (all
  of which are custom VJPs; Flax's layers have none)."""
  return "custom_vjp_call" in str(jax.make_jaxpr(fn)(*args))


def _on_xla_cpu(module, winograd):
  """The `vqjax.xla_cpu` layer with the fields of Flax's `module`."""
  cls = {nn.Conv: xla_cpu.Conv, nn.ConvTranspose: xla_cpu.ConvTranspose}[
      type(module)]
  fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.name not in ("parent", "name")}
  return cls(**fields, winograd=winograd)


def _assert_same_function(module, x, winograd=True):
  """Flax's layer `module` (taking one input x [B, H, W, C]) and its
  `vqjax.xla_cpu` twin: same params tree and init, same outputs and
  gradients (input, params)."""
  fast = _on_xla_cpu(module, winograd)
  cpu_apply, cpu_init = fast.apply, fast.init

  assert jax.eval_shape(cpu_init, jax.random.PRNGKey(0), x) == jax.eval_shape(
      module.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(1)
  variables = jax.tree_util.tree_map(
      lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.3,
      jax.eval_shape(module.init, jax.random.PRNGKey(0), x))
  assert _computed_by_xla_cpu(cpu_apply, variables, x)
  assert not _computed_by_xla_cpu(module.apply, variables, x)

  @jax.jit
  def outputs_and_grads(variables, x):
    y_plain, vjp_plain = jax.vjp(module.apply, variables, x)
    y_fast, vjp_fast = jax.vjp(cpu_apply, variables, x)
    cotangent = jnp.cos(jnp.arange(y_plain.size, dtype=jnp.float32)
                        ).reshape(y_plain.shape)
    return y_plain, y_fast, vjp_plain(cotangent), vjp_fast(cotangent)

  y_plain, y_fast, g_plain, g_fast = outputs_and_grads(variables, x)
  assert y_plain.shape == y_fast.shape
  np.testing.assert_allclose(y_fast, y_plain, **TOL)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, **TOL),
                         g_fast, g_plain)


def _input(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shape,features", [
    ((2, 7, 7, 5), 3), ((1, 3, 5, 4), 6), ((2, 14, 14, 8), 1),
    ((2, 1, 1, 3), 2)])
def test_conv_transpose_matches_flax(shape, features):
  _assert_same_function(
      nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME"),
      _input(shape))


@pytest.mark.parametrize("shape", [
    (2, 28, 28, 1), (2, 14, 14, 6), (1, 7, 7, 3), (2, 9, 6, 2), (1, 2, 2, 4),
    (1, 1, 1, 3)])
def test_strided_conv_matches_flax(shape):
  _assert_same_function(nn.Conv(5, (4, 4), strides=(2, 2), padding="SAME"),
                        _input(shape))


@pytest.mark.parametrize("kernel,strides,padding,shape,features", [
    # Forward / input-gradient / kernel-gradient paths of `convolutions`:
    ((3, 3), (1, 1), "SAME", (2, 7, 7, 70), 4),  # XLA conv; conv-form dW
    ((3, 3), (1, 1), "SAME", (2, 6, 5, 3), 4),   # im2col forward and dW
    ((1, 1), (1, 1), "SAME", (2, 7, 7, 6), 4),   # matmul, C_in > C_out
    ((1, 1), (1, 1), "SAME", (2, 3, 4, 2), 5),   # matmul, C_in < C_out
    ((2, 2), (1, 1), "VALID", (1, 6, 5, 20), 17),  # per-tap dW; padded dx
    ((3, 3), (1, 1), "VALID", (1, 6, 6, 9), 12),  # explicitly padded dx
    ((2, 3), (1, 1), "VALID", (1, 6, 8, 4), 4),
    ((3, 3), (1, 1), ((2, 0), (1, 3)), (1, 5, 5, 2), 4),
    ((3, 3), (2, 2), "SAME", (2, 9, 8, 3), 4),   # space-to-depth paths
    ((3, 3), (2, 2), "SAME", (1, 8, 8, 20), 6),
    ((5, 5), (3, 3), "VALID", (1, 11, 13, 2), 4),
    ((4, 4), (2, 2), ((0, 3), (2, 1)), (1, 8, 7, 2), 4),
])
def test_conv_matches_nn_conv(kernel, strides, padding, shape, features):
  _assert_same_function(
      nn.Conv(features, kernel, strides=strides, padding=padding),
      _input(shape))


@pytest.mark.parametrize("inference", [False, True])
def test_vqvae_same_function_with_xla_cpu_layers(inference):
  """The whole VQ-VAE (encoder, quantizer, decoder) with the layers
  `build.layers("xla_cpu")` injects (Winograd for training, direct for
  inference) and with Flax's: same parameters, reconstruction, codes and
  gradients."""
  fields = dict(num_hiddens=32, num_residual_hiddens=8, num_residual_layers=1,
                num_codes=8, code_dim=4, use_ema=False)
  model = VQVAE(**fields)
  layers = build.layers("xla_cpu", inference)
  layers.pop("valid_conv", None)  # The PixelCNN's, not the VQ-VAE's.
  fast = VQVAE(**fields, **layers)
  x = _input((2, 28, 28, 1)) * 0.3
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(fast.init, jax.random.PRNGKey(0), x) == shapes
  rng = np.random.default_rng(1)
  variables = jax.tree_util.tree_map(
      lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.2, shapes)
  assert _computed_by_xla_cpu(fast.apply, variables, x)
  assert not _computed_by_xla_cpu(model.apply, variables, x)

  def run(variables, cpu):
    out = (fast if cpu else model).apply(variables, x)
    return jnp.mean(jnp.sin(3 * out["reconstruction"])) + out["loss"], out

  @jax.jit
  def both(variables):
    return [jax.value_and_grad(run, has_aux=True)(variables, cpu)
            for cpu in (True, False)]

  ((loss_cpu, out_cpu), g_cpu), ((loss, out), g) = both(variables)
  np.testing.assert_array_equal(out_cpu["levels"]["codes"]["indices"],
                                out["levels"]["codes"]["indices"])
  np.testing.assert_allclose(out_cpu["reconstruction"], out["reconstruction"],
                             **TOL)
  np.testing.assert_allclose(loss_cpu, loss, **TOL)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, **TOL),
                         g_cpu, g)


def test_space_to_depth_layout():
  x = jnp.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
  y = convolutions.space_to_depth(x, 2)
  assert y.shape == (2, 2, 3, 12)
  # Channel (p, q, c) of block (i, j) is pixel (2i + p, 2j + q), channel c.
  np.testing.assert_array_equal(y[1, 1, 2].reshape(2, 2, 3),
                                x[1, 2:4, 4:6, :])


# The quantizer's fast paths against the plain formulations they replace.

def test_argmin_matches_jnp_argmin_with_ties_and_nans():
  from vqjax import quantizer as vq  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  d = rng.integers(0, 4, size=(50, 7)).astype(np.float32)  # many ties
  d[3, 5] = d[7, 0] = d[7, 4] = np.nan
  d[9] = np.inf
  np.testing.assert_array_equal(cpu_quantizer.argmin_last(jnp.asarray(d)),
                                jnp.argmin(jnp.asarray(d), axis=-1))
  z = rng.normal(size=(4, 6, 3)).astype(np.float32)
  codebook = rng.normal(size=(9, 3)).astype(np.float32)
  np.testing.assert_array_equal(jax.jit(cpu_quantizer.nearest_code)(z, codebook),
                                vq.nearest_code(z, codebook))


def test_auto_kernels_follow_the_backend():
  assert jax.default_backend() == "cpu"
  assert build.resolve_kernels("auto") == "xla_cpu"
  assert build.resolve_kernels("xla") == "xla"
  with pytest.raises(ValueError, match="model.kernels='cuda' is not one of"):
    build.resolve_kernels("cuda")


def test_models_built_for_cpu_are_fast_and_direct_modules_are_flax():
  """`build` injects the XLA:CPU layers with no call around `apply`; a
  module instantiated directly computes with Flax's; the backend package
  imports no model."""
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  config = load_config("mnist_vqvae", "tiny")
  config.model.kernels = "auto"
  built = build.stage1(config, out_channels=1)
  assert built.conv.func is xla_cpu.Conv and built.conv.keywords["winograd"]
  assert built.nearest_code is xla_cpu.nearest_code
  assert not build.stage1(config, 1, inference=True).conv.keywords["winograd"]
  assert VQVAE().conv is nn.Conv and VQVAE().conv_transpose is nn.ConvTranspose
  config.model.kernels = "xla"
  assert build.stage1(config, out_channels=1).conv is nn.Conv
  import sys  # pylint: disable=g-import-not-at-top
  out = __import__("subprocess").run(
      [sys.executable, "-c", "import sys, vqjax.xla_cpu; print(sorted(m for m "
       "in sys.modules if m.startswith('vqjax.models')))"],
      capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_process_settings_stay_off_other_backends(monkeypatch):
  """With an accelerator as the backend, `configure` touches nothing: no
  malloc options, no device count, no XLA flags."""
  called = []
  monkeypatch.setattr(process, "reuse_freed_memory", lambda: called.append(1))
  monkeypatch.setattr(process, "use_cpu_cores_as_devices",
                      lambda *a: called.append(2))
  flags = os.environ.get("XLA_FLAGS")
  for platforms in ("cuda", "tpu", "gpu,cpu"):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert not process.backend_will_be_cpu()
    assert process.configure(0, (128,)) == {"cpu": False, "malloc": False,
                                            "devices": 0}
  assert not called and os.environ.get("XLA_FLAGS") == flags
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert process.backend_will_be_cpu()
