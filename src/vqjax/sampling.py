"""Jit-compiled ancestral sampling from an autoregressive prior over a grid
(`vqjax.models.CodePrior`, or a bare `GatedPixelCNN`).

The sampler's contract with the model (`AutoregressiveModel`): the fields
`num_values`, `num_channels`, `kernel_size`, `features`, `num_layers`,
`num_classes`, `cond_features`, `attention_every`, `attention_heads`,
`dtype`, and the methods `logits(x, labels, cond)` (the plain sampler),
`embed`, `vertical_row`, `horizontal_pixel` and `attention_kv` (the cached
one), plus `condition(top_codes)` when top codes are given. `cond` is the
model's conditioning map, computed once. Models are applied without `train`,
so dropout is off.

Two samplers draw the same samples for the same key:

- "plain": one full forward pass per sampled value (H * W * C passes).
- "cached" (Ramachandran et al., 2017, "Fast Generation for Convolutional
  Autoregressive Models"): the vertical stack runs once per row, from a cache
  of the last k//2 + 1 rows of each layer's vertical input; the horizontal
  stack and head run once per value, from a buffer of the last k//2 columns of
  each layer's horizontal input in the current row. Each value costs O(layers)
  work, so a whole sample costs about one forward pass. Attention blocks keep
  the keys and values of every position drawn so far (a key/value cache,
  filled once a position is complete), so a position's attention costs
  O(H * W).

The value at raster step t = (i * W + j) * C + c is drawn with
`jax.random.categorical(jax.random.fold_in(key, t), logits / temperature)`
(or the argmax when `greedy`), so it depends only on (key, t) and the
logits, whichever sampler computes them.

Classifier-free guidance (Ho & Salimans, 2022; `guidance` w > 0, for a prior
trained with label dropout) runs either sampler on the batch twice over, the
second copy with the "no label" class, and draws every value from
c + w (c - u), c and u the conditional and unconditional logits; both copies
take the drawn value, so u is the unconditional model's view of the same
sample. w = 0 is the conditional prior.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax import lax

from vqjax.models.pixelcnn import attention_layers

Array = jax.Array
METHODS = ("plain", "cached")


class AutoregressiveModel(Protocol):
  """What the samplers need of a Linen module (see the module docstring)."""
  num_values: int
  num_channels: int
  kernel_size: int
  features: int
  num_layers: int
  num_classes: int
  cond_features: int
  attention_every: int
  attention_heads: int
  dtype: Any

  def logits(self, x: Array, labels: Array | None, cond: Array | None
             ) -> Array:
    """`[B, H, W, C]` int -> `[B, H, W, C, V]` float32, causal."""


def sample(model: AutoregressiveModel, variables, key: Array,
           shape: tuple[int, int, int, int], temperature: float | Array = 1.0,
           labels: Array | None = None, cond: Array | None = None,
           method: str = "cached", top_codes: Array | None = None,
           greedy: bool = False, guidance: float = 0.0,
           null_label: int | None = None) -> Array:
  """Draws samples x ~ p(x | labels, cond) in raster order.

  Works inside a caller's `jit` (the temperature may be traced).

  Args:
    model: the prior (a `CodePrior` or `GatedPixelCNN`).
    variables: its variables (`{"params": ...}`).
    key: PRNG key; the same key gives the same samples with either method.
    shape: (B, H, W, C), with C == model.num_channels.
    temperature: > 0; every conditional's logits are divided by it.
    labels: [B] int class labels, iff model.num_classes > 0.
    cond: [B, H, W, F_c] conditioning map, iff model.cond_features > 0 (a
      `CodePrior` computes it from `top_codes` instead).
    method: "cached" (fast) or "plain" (a full forward pass per value).
    top_codes: [B, h_t, w_t, 1] int, a VQ-VAE-2 bottom prior's top codes.
    greedy: take the most likely value at every step (no randomness;
      `temperature` is ignored).
    guidance: w >= 0, classifier-free guidance (see the module docstring);
      w > 0 needs `labels` and `null_label`. May be traced.
    null_label: the model's "no label" class (`TrainedPrior.null_label`).

  Returns:
    [B, H, W, C] int32 samples in [0, V).
  """
  samples, _ = _run(model, variables, key, shape, temperature, labels, cond,
                    method, top_codes, greedy, return_logits=False,
                    guidance=guidance, null_label=null_label)
  return samples


def sample_with_logits(model: AutoregressiveModel, variables, key: Array,
                       shape: tuple[int, int, int, int],
                       temperature: float | Array = 1.0,
                       labels: Array | None = None, cond: Array | None = None,
                       method: str = "cached", top_codes: Array | None = None,
                       greedy: bool = False) -> tuple[Array, Array]:
  """Like `sample`, also returning the logits each step sampled from.

  A debugging hook: by causality, the logits at every step must equal
  `model.apply(variables, samples, labels, cond, method="logits")` on the
  final samples.

  Returns:
    samples: [B, H, W, C] int32.
    logits: [B, H, W, C, V] float32, before division by the temperature.
  """
  return _run(model, variables, key, shape, temperature, labels, cond, method,
              top_codes, greedy, return_logits=True)


def _run(model, variables, key, shape, temperature, labels, cond, method,
         top_codes, greedy, return_logits, num_steps=None, guidance=0.0,
         null_label=None):
  guided = isinstance(guidance, jax.core.Tracer) or guidance != 0
  if guided:  # the batch twice: [conditional; "no label"] copies
    if not isinstance(guidance, jax.core.Tracer) and not guidance > 0:
      raise ValueError(f"guidance must be >= 0, got {guidance}.")
    if null_label is None or labels is None:
      raise ValueError("guidance needs labels and the model's null_label (a "
                       "prior trained with --config.model.label_dropout > 0).")
    if not 0 <= null_label < model.num_classes:
      raise ValueError(f"null_label={null_label} is not a class of the model "
                       f"(num_classes={model.num_classes}).")
    if return_logits:
      raise ValueError("sample_with_logits does not take guidance.")
    b = shape[0]
    both = lambda a: None if a is None else jnp.concatenate([a, a])  # noqa: E731
    labels = jnp.concatenate([jnp.asarray(labels, jnp.int32),
                              jnp.full((b,), null_label, jnp.int32)])
    cond, top_codes = both(cond), both(top_codes)
    shape = (2 * b,) + tuple(shape[1:])
  if top_codes is not None:
    if cond is not None:
      raise ValueError("pass top_codes or cond, not both.")
    cond = model.apply(variables, top_codes, method="condition")
  shape = _check_args(model, shape, temperature, labels, cond, method)
  temperature = jnp.asarray(temperature, jnp.float32)
  samples, logits = _sample_jit(
      model, variables, key, temperature, labels, cond,
      jnp.asarray(guidance, jnp.float32) if guided else None, shape=shape,
      method=method, return_logits=return_logits, num_steps=num_steps,
      greedy=bool(greedy))
  if guided:
    return samples[:shape[0] // 2], None
  return samples, logits


def _check_args(model, shape, temperature, labels, cond, method):
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  if not isinstance(temperature, jax.core.Tracer):
    if jnp.ndim(temperature) != 0:
      raise ValueError(f"temperature must be a scalar, got shape "
                       f"{jnp.shape(temperature)}.")
    if not float(temperature) > 0:
      raise ValueError(f"temperature must be > 0, got {float(temperature)}; "
                       "pass greedy=True for the most likely values.")
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
      raise ValueError(f"pass top_codes (or cond of shape {list(want)}), got "
                       f"{None if cond is None else jnp.shape(cond)}.")
  elif cond is not None:
    raise ValueError("top_codes or cond given, but the model is not "
                     "conditioned on them.")
  return shape


def _draw(key: Array, step, logits: Array, temperature: Array,
          greedy: bool) -> Array:
  """Draws step `step`'s values: logits [B, V] -> [B] int32."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(
      jax.random.fold_in(key, step), logits / temperature, axis=-1
  ).astype(jnp.int32)


def _guided_draw(key: Array, step, logits: Array, temperature: Array, *,
                 draw, guidance: Array) -> Array:
  """`draw` from c + w (c - u) for logits [2B, V] = [c; u]; -> [2B], both
  copies the same values."""
  cond, uncond = jnp.split(logits, 2)
  values = draw(key, step, cond + guidance * (cond - uncond), temperature)
  return jnp.concatenate([values, values])


@functools.partial(jax.jit, static_argnames=(
    "model", "shape", "method", "return_logits", "num_steps", "greedy"))
def _sample_jit(model, params, key, temperature, labels, cond, guidance, *,
                shape, method, return_logits, num_steps, greedy):
  draw = functools.partial(_draw, greedy=greedy)
  if guidance is not None:  # batch = [conditional; unconditional] copies
    draw = functools.partial(_guided_draw, draw=draw, guidance=guidance)
  if method == "plain":
    return _sample_plain(model, params, key, temperature, labels, cond, shape,
                         return_logits, draw, num_steps)
  return _sample_cached(model, params, key, temperature, labels, cond, shape,
                        return_logits, draw)


def _sample_plain(model, params, key, temperature, labels, cond, shape,
                  return_logits, draw, num_steps=None):
  """A full forward pass per step. `num_steps` truncates (for benchmarks)."""
  b, h, w, c = shape
  x = jnp.zeros(shape, jnp.int32)
  logits_buf = (jnp.zeros((*shape, model.num_values), jnp.float32)
                if return_logits else None)

  def body(t, carry):
    x, logits_buf = carry
    i, rest = jnp.divmod(t, w * c)
    j, ch = jnp.divmod(rest, c)
    logits = model.apply(params, x, labels, cond,
                         method="logits")[:, i, j, ch]  # [B, V]
    x = x.at[:, i, j, ch].set(draw(key, t, logits, temperature))
    if logits_buf is not None:
      logits_buf = logits_buf.at[:, i, j, ch].set(logits)
    return x, logits_buf

  steps = h * w * c if num_steps is None else num_steps
  return lax.fori_loop(0, steps, body, (x, logits_buf))


def _sample_cached(model, params, key, temperature, labels, cond, shape,
                   return_logits, draw):
  """Row-cached vertical stack, column-buffered horizontal stack."""
  b, h, w, c = shape
  d = model.kernel_size // 2
  f = model.features
  num_layers = model.num_layers + 1
  num_blocks = len(attention_layers(model.num_layers, model.attention_every))
  heads = model.attention_heads
  dtype = model.dtype

  def embed(values):
    return model.apply(params, values, method="embed")

  def row_body(i, carry):
    x, logits_buf, caches, kv_caches = carry
    cond_row = None if cond is None else lax.dynamic_slice_in_dim(cond, i, 1, 1)
    v_pre, caches = model.apply(params, caches, labels, cond_row,
                                method="vertical_row")

    def col_body(j, carry):
      x, logits_buf, buffers, kv_caches = carry
      v_pre_j = v_pre[:, :, j]  # [L + 1, B, 2F]
      cond_pix = (None if cond_row is None
                  else lax.dynamic_slice_in_dim(cond_row, j, 1, 2))
      position = i * w + j

      def channel_body(ch, carry):
        x, logits_buf, _, _ = carry
        logits, inputs, block_inputs = model.apply(
            params, buffers, embed(x[:, i, j]), v_pre_j, labels, cond_pix,
            kv_caches, position, (h, w), method="horizontal_pixel")
        logits = logits[:, ch]  # [B, V]
        t = (i * w + j) * c + ch
        x = x.at[:, i, j, ch].set(draw(key, t, logits, temperature))
        if logits_buf is not None:
          logits_buf = logits_buf.at[:, i, j, ch].set(logits)
        return x, logits_buf, inputs, block_inputs

      inputs = [jnp.zeros((b, f), dtype)] * num_layers
      block_inputs = [jnp.zeros((b, f), dtype)] * num_blocks
      x, logits_buf, inputs, block_inputs = lax.fori_loop(
          0, c, channel_body, (x, logits_buf, inputs, block_inputs))
      # Layers >= 1 see only channels < C-1 of this pixel, so their inputs from
      # the last channel step are final; layer 0's input is the embedding of
      # the now complete pixel (attention blocks need C = 1: theirs are final).
      emb_pixel = embed(x[:, i, j])
      inputs[0] = emb_pixel
      buffers = [jnp.concatenate([buf[:, 1:], inp[:, None]], axis=1)
                 for buf, inp in zip(buffers, inputs)]
      new_kv = model.apply(params, block_inputs, emb_pixel, position, (h, w),
                           method="attention_kv")
      kv_caches = [(keys.at[:, position].set(k), values.at[:, position].set(v))
                   for (keys, values), (k, v) in zip(kv_caches, new_kv)]
      return x, logits_buf, buffers, kv_caches

    buffers = [jnp.zeros((b, d, f), dtype)] * num_layers
    x, logits_buf, _, kv_caches = lax.fori_loop(
        0, w, col_body, (x, logits_buf, buffers, kv_caches))
    new_row = jnp.pad(embed(x[:, i]), ((0, 0), (d, d), (0, 0)))
    caches[0] = jnp.concatenate([caches[0][:, 1:], new_row[:, None]], axis=1)
    return x, logits_buf, caches, kv_caches

  x = jnp.zeros(shape, jnp.int32)
  logits_buf = (jnp.zeros((*shape, model.num_values), jnp.float32)
                if return_logits else None)
  caches = [jnp.zeros((b, d + 1, w + 2 * d, f), dtype)] * num_layers
  kv = jnp.zeros((b, h * w, heads, f // heads), dtype) if num_blocks else None
  kv_caches = [(kv, kv)] * num_blocks
  x, logits_buf, _, _ = lax.fori_loop(
      0, h, row_body, (x, logits_buf, caches, kv_caches))
  return x, logits_buf
