"""Jit-compiled ancestral sampling from a `GatedPixelCNN`.

Two samplers draw the same samples for the same key:

- "plain": one full forward pass per sampled value (H * W * C passes).
- "cached" (Ramachandran et al., 2017, "Fast Generation for Convolutional
  Autoregressive Models"): the vertical stack runs once per row, from a cache
  of the last k//2 + 1 rows of each layer's vertical input; the horizontal
  stack and head run once per value, from a buffer of the last k//2 columns of
  each layer's horizontal input in the current row. Each value costs O(layers)
  work, so a whole sample costs about one forward pass.

The value at raster step t = (i * W + j) * C + c is drawn with
`jax.random.categorical(jax.random.fold_in(key, t), logits / temperature)`, so
it depends only on (key, t) and the logits, whichever sampler computes them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from vqjax.models.pixelcnn import GatedPixelCNN

Array = jax.Array
METHODS = ("plain", "cached")


def sample(model: GatedPixelCNN, params, key: Array,
           shape: tuple[int, int, int, int], temperature: float = 1.0,
           labels: Array | None = None, cond: Array | None = None,
           method: str = "cached") -> Array:
  """Draws samples x ~ p(x | labels, cond) in raster order.

  Args:
    model: the `GatedPixelCNN` module.
    params: its variables, as returned by `model.init` (a {"params": ...} dict).
    key: PRNG key; the same key gives the same samples with either method.
    shape: (B, H, W, C), with C == model.num_channels.
    temperature: > 0; every conditional's logits are divided by it.
    labels: [B] int class labels, iff model.num_classes > 0.
    cond: [B, H, W, F_c] conditioning map, iff model.cond_features > 0.
    method: "cached" (fast) or "plain" (a full forward pass per value).

  Returns:
    [B, H, W, C] int32 samples in [0, V).
  """
  samples, _ = _run(model, params, key, shape, temperature, labels, cond,
                    method, return_logits=False)
  return samples


def sample_with_logits(model: GatedPixelCNN, params, key: Array,
                       shape: tuple[int, int, int, int],
                       temperature: float = 1.0, labels: Array | None = None,
                       cond: Array | None = None,
                       method: str = "cached") -> tuple[Array, Array]:
  """Like `sample`, also returning the logits each step sampled from.

  A debugging hook: by causality, the logits at every step must equal
  `model.apply(params, samples, labels, cond)` on the final samples.

  Returns:
    samples: [B, H, W, C] int32.
    logits: [B, H, W, C, V] float32, before division by the temperature.
  """
  return _run(model, params, key, shape, temperature, labels, cond, method,
              return_logits=True)


def _run(model, params, key, shape, temperature, labels, cond, method,
         return_logits, num_steps=None):
  shape = _check_args(model, shape, temperature, labels, cond, method)
  temperature = jnp.asarray(temperature, jnp.float32)
  return _sample_jit(model, params, key, temperature, labels, cond,
                     shape=shape, method=method, return_logits=return_logits,
                     num_steps=num_steps)


def _check_args(model, shape, temperature, labels, cond, method):
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  try:
    temperature = float(temperature)
  except TypeError as e:
    raise ValueError("temperature must be a concrete number.") from e
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  if len(shape) != 4:
    raise ValueError(f"shape must be (B, H, W, C), got {shape}.")
  shape = tuple(int(s) for s in shape)
  b, h, w, c = shape
  if c != model.num_channels:
    raise ValueError(
        f"shape has C={c} but the model has num_channels="
        f"{model.num_channels}.")
  if model.num_classes:
    if labels is None or jnp.shape(labels) != (b,):
      got = None if labels is None else jnp.shape(labels)
      raise ValueError(f"pass labels of shape [{b}] for a class-conditional "
                       f"model, got {got}.")
  elif labels is not None:
    raise ValueError("labels given but model.num_classes == 0.")
  if model.cond_features:
    want = (b, h, w, model.cond_features)
    if cond is None or jnp.shape(cond) != want:
      raise ValueError(f"pass cond of shape {list(want)}, got "
                       f"{None if cond is None else jnp.shape(cond)}.")
  elif cond is not None:
    raise ValueError("cond given but model.cond_features == 0.")
  return shape


def _draw(key: Array, step, logits: Array, temperature: Array) -> Array:
  """Draws step `step`'s values: logits [B, V] -> [B] int32."""
  return jax.random.categorical(
      jax.random.fold_in(key, step), logits / temperature, axis=-1
  ).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=(
    "model", "shape", "method", "return_logits", "num_steps"))
def _sample_jit(model, params, key, temperature, labels, cond, *, shape,
                method, return_logits, num_steps):
  if method == "plain":
    return _sample_plain(model, params, key, temperature, labels, cond, shape,
                         return_logits, num_steps)
  return _sample_cached(model, params, key, temperature, labels, cond, shape,
                        return_logits)


def _sample_plain(model, params, key, temperature, labels, cond, shape,
                  return_logits, num_steps=None):
  """A full forward pass per step. `num_steps` truncates (for benchmarks)."""
  b, h, w, c = shape
  x = jnp.zeros(shape, jnp.int32)
  logits_buf = (jnp.zeros((*shape, model.num_values), jnp.float32)
                if return_logits else None)

  def body(t, carry):
    x, logits_buf = carry
    i, rest = jnp.divmod(t, w * c)
    j, ch = jnp.divmod(rest, c)
    logits = model.apply(params, x, labels, cond)[:, i, j, ch]  # [B, V]
    x = x.at[:, i, j, ch].set(_draw(key, t, logits, temperature))
    if logits_buf is not None:
      logits_buf = logits_buf.at[:, i, j, ch].set(logits)
    return x, logits_buf

  steps = h * w * c if num_steps is None else num_steps
  return lax.fori_loop(0, steps, body, (x, logits_buf))


def _sample_cached(model, params, key, temperature, labels, cond, shape,
                   return_logits):
  """Row-cached vertical stack, column-buffered horizontal stack."""
  b, h, w, c = shape
  d = model.kernel_size // 2
  f = model.features
  num_layers = model.num_layers + 1
  dtype = model.dtype

  def embed(values):
    return model.apply(params, values, method=GatedPixelCNN.embed)

  def row_body(i, carry):
    x, logits_buf, caches = carry
    cond_row = None if cond is None else lax.dynamic_slice_in_dim(cond, i, 1, 1)
    v_pre, caches = model.apply(params, caches, labels, cond_row,
                                method=GatedPixelCNN.vertical_row)

    def col_body(j, carry):
      x, logits_buf, buffers = carry
      v_pre_j = v_pre[:, :, j]  # [L + 1, B, 2F]
      cond_pix = (None if cond_row is None
                  else lax.dynamic_slice_in_dim(cond_row, j, 1, 2))

      def channel_body(ch, carry):
        x, logits_buf, _ = carry
        logits, inputs = model.apply(
            params, buffers, embed(x[:, i, j]), v_pre_j, labels, cond_pix,
            method=GatedPixelCNN.horizontal_pixel)
        logits = logits[:, ch]  # [B, V]
        t = (i * w + j) * c + ch
        x = x.at[:, i, j, ch].set(_draw(key, t, logits, temperature))
        if logits_buf is not None:
          logits_buf = logits_buf.at[:, i, j, ch].set(logits)
        return x, logits_buf, inputs

      inputs = [jnp.zeros((b, f), dtype)] * num_layers
      x, logits_buf, inputs = lax.fori_loop(
          0, c, channel_body, (x, logits_buf, inputs))
      # Layers >= 1 see only channels < C-1 of this pixel, so their inputs from
      # the last channel step are final; layer 0's input is the embedding of
      # the now complete pixel.
      inputs[0] = embed(x[:, i, j])
      buffers = [jnp.concatenate([buf[:, 1:], inp[:, None]], axis=1)
                 for buf, inp in zip(buffers, inputs)]
      return x, logits_buf, buffers

    buffers = [jnp.zeros((b, d, f), dtype)] * num_layers
    x, logits_buf, _ = lax.fori_loop(0, w, col_body, (x, logits_buf, buffers))
    new_row = jnp.pad(embed(x[:, i]), ((0, 0), (d, d), (0, 0)))
    caches[0] = jnp.concatenate([caches[0][:, 1:], new_row[:, None]], axis=1)
    return x, logits_buf, caches

  x = jnp.zeros(shape, jnp.int32)
  logits_buf = (jnp.zeros((*shape, model.num_values), jnp.float32)
                if return_logits else None)
  caches = [jnp.zeros((b, d + 1, w + 2 * d, f), dtype)] * num_layers
  x, logits_buf, _ = lax.fori_loop(0, h, row_body, (x, logits_buf, caches))
  return x, logits_buf
