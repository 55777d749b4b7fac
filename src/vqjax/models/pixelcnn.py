"""Gated PixelCNN (van den Oord et al., 2016), without the blind spot.

"Conditional Image Generation with PixelCNN Decoders", arXiv:1606.05328.

Layout of one gated layer (F = `features`, d = `kernel_size // 2`):

  vertical    v_pre = conv_{(d+1) x k}(v_in) + cond;   v_out = gate(v_pre)
  horizontal  h_pre = conv_{1 x (d+1)}(h_in) + link_{1x1}(v_pre) + cond
              g     = gate(h_pre)
              h_out = res_{1x1}(g) + h_in     (layer 0: no residual)
              skip  = skip_{1x1}(g)           (summed over layers into the head)
  gate(a) = tanh(a[..., :F]) * sigmoid(a[..., F:])
  head        logits = 1x1(relu(1x1(relu(sum of skips))))

Causality is by construction (no masked kernels on the vertical stack): the
vertical activations of row i only ever see input rows < i. Layer 0's vertical
conv reads input rows i-d-1..i-1 and later layers read rows i-d..i of the
previous vertical activations. The horizontal conv reads columns j-d..j of the
current row, so the only masked tap is its centre tap (the current pixel).

Channels of a pixel (R -> G -> B for C = 3) are ordered by splitting every
horizontal-stack feature axis into C groups. On the centre tap and on every
1x1 conv of the horizontal stack and head, output group c sees input groups < c
(mask A, layer 0, whose input groups are the per-channel embeddings) or <= c
(mask B, everything after). The logits of channel c come from head groups
<= c, so they depend on earlier pixels and on channels < c of the current
pixel only. The vertical stack sees whole rows above, so it needs no groups.

Optional causal self-attention (`attention_every = n`; PixelSNAIL, Chen et
al. 2018, and the VQ-VAE-2 top prior): after every n-th gated layer (not the
last) the horizontal stream h gets a residual from multi-head attention in
which the position p = i * W + j queries every earlier position q < p:

  query(p)     = Dense([LN(h_p), pos_p])
  key/value(q) = Dense([LN(h_q), emb(x_q), pos_q]),  plus a learned start
                 key/value that every position sees (position 0 sees it only)
  h_p         += Dense(attention(query(p), keys/values of q < p and start))

pos are fixed sinusoids of (i, j). h_q depends on positions < q only, and
emb(x_q) on q itself, so p sees exactly the positions before it, all of them.
Channel groups do not pass through attention, so it needs C = 1 (codes).

Dropout (`dropout > 0`, training only: `train=True` with a "dropout" rng) acts
on the horizontal stream's gated activations g and on the attention residual.
Example b's masks are drawn from `fold_in(key, example_ids[b])`, so a batch
split over devices draws the masks the whole batch would (`ExampleDropout`).

Everything a layer computes is a VALID convolution of an explicitly padded
input, so the cached sampler (`vqjax.sampling`) calls the very same layer code
on a few cached rows/columns via `vertical_row` and `horizontal_pixel`, and
the attention blocks' keys and values go into a cache (`attention_kv`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any


def channel_groups(n: int, num_channels: int) -> np.ndarray:
  """Splits `n` feature maps into `num_channels` contiguous groups: [n] int."""
  return (np.arange(n) * num_channels) // n


@functools.lru_cache(maxsize=None)
def group_mask(n_in: int, n_out: int, num_channels: int, mask_type: str,
               gated_out: bool = False) -> np.ndarray:
  """Channel-ordering mask for a 1x1 conv or a centre tap: [n_in, n_out].

  Args:
    n_in: input feature maps.
    n_out: output feature maps.
    num_channels: C, the number of ordered channels per pixel.
    mask_type: "A" (group c sees groups < c) or "B" (groups <= c).
    gated_out: the output is a gate pre-activation [tanh half, sigmoid half],
      grouped half by half so that the two halves of a gate share a group.
  """
  g_in = channel_groups(n_in, num_channels)
  if gated_out:
    g_out = np.tile(channel_groups(n_out // 2, num_channels), 2)
  else:
    g_out = channel_groups(n_out, num_channels)
  if mask_type == "A":
    mask = g_in[:, None] < g_out[None, :]
  elif mask_type == "B":
    mask = g_in[:, None] <= g_out[None, :]
  else:
    raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
  return mask.astype(np.float32)


def valid_conv(x: Array, kernel: Array) -> Array:
  """VALID NHWC convolution: `x [B, H, W, I]`, `kernel [kh, kw, I, O]` ->
  `[B, H - kh + 1, W - kw + 1, O]`."""
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def attention_layers(num_layers: int, every: int) -> tuple[int, ...]:
  """The gated layers (0 .. num_layers) followed by an attention block: every
  `every`-th, not the last (whose horizontal output only feeds the skip)."""
  if every <= 0:
    return ()
  return tuple(l for l in range(num_layers) if (l + 1) % every == 0)


POSITION_FREQUENCIES = 4  # sinusoid frequencies per axis


def positions(h: int, w: int) -> Array:
  """Sinusoidal features of every position in raster order: [h * w, P]
  float32, P = 4 * POSITION_FREQUENCIES."""
  i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  scales = np.pi * 2.0 ** np.arange(POSITION_FREQUENCIES)
  angles = np.concatenate([((i.reshape(-1, 1) + 0.5) / h) * scales,
                           ((j.reshape(-1, 1) + 0.5) / w) * scales], axis=1)
  return jnp.asarray(np.concatenate([np.sin(angles), np.cos(angles)], axis=1),
                     jnp.float32)


class ExampleDropout(nn.Module):
  """Dropout (as `nn.Dropout`, from the "dropout" rng) whose mask for example
  b is drawn from `fold_in(key, example_ids[b])`: it depends on the example's
  id, not on its place in this call's batch.

  Attributes:
    rate: the probability of zeroing an element.
  """
  rate: float

  @nn.compact
  def __call__(self, x: Array, train: bool = False,
               example_ids: Array | None = None) -> Array:
    """x [B, ...] -> x with elements zeroed (and the rest scaled by
    1 / (1 - rate)) iff `train`; example_ids [B] int (default 0 .. B-1)."""
    if not train or self.rate == 0.0:
      return x
    key = self.make_rng("dropout")
    ids = jnp.arange(x.shape[0]) if example_ids is None else example_ids
    keep = jax.vmap(lambda i: jax.random.bernoulli(
        jax.random.fold_in(key, i), 1.0 - self.rate, x.shape[1:]))(ids)
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


def gate(x: Array) -> Array:
  """tanh(x[..., :F]) * sigmoid(x[..., F:]): [..., 2F] -> [..., F]."""
  f = x.shape[-1] // 2
  return jnp.tanh(x[..., :f]) * jax.nn.sigmoid(x[..., f:])


class GatedLayer(nn.Module):
  """One gated layer: a vertical and a horizontal stack, plus a skip output.

  Layer code only does VALID convs on inputs the caller has padded, so it is
  shared by the full forward pass and by the cached sampler. `valid_conv`
  computes them (`valid_conv` above unless a builder injects another
  formulation, e.g. Winograd's on XLA:CPU).
  """
  features: int
  kernel_size: int
  num_channels: int
  skip_features: int
  first: bool
  last: bool
  num_classes: int = 0
  cond_features: int = 0
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  valid_conv: Callable[[Array, Array], Array] = valid_conv

  def setup(self):
    f, k = self.features, self.kernel_size
    self.drop = ExampleDropout(self.dropout)
    kh = kw = k // 2 + 1
    init = nn.initializers.lecun_normal()
    zeros = nn.initializers.zeros
    pd = self.param_dtype
    self.v_kernel = self.param("v_kernel", init, (kh, k, f, 2 * f), pd)
    self.v_bias = self.param("v_bias", zeros, (2 * f,), pd)
    self.h_kernel = self.param("h_kernel", init, (1, kw, f, 2 * f), pd)
    self.h_bias = self.param("h_bias", zeros, (2 * f,), pd)
    self.link_kernel = self.param("link_kernel", init, (2 * f, 2 * f), pd)
    self.skip_kernel = self.param(
        "skip_kernel", init, (f, self.skip_features), pd)
    self.skip_bias = self.param("skip_bias", zeros, (self.skip_features,), pd)
    if not self.last:
      self.res_kernel = self.param("res_kernel", init, (f, f), pd)
      self.res_bias = self.param("res_bias", zeros, (f,), pd)
    if self.num_classes:
      self.label_embed = nn.Embed(
          self.num_classes, 2 * f, embedding_init=nn.initializers.normal(0.1),
          dtype=self.dtype, param_dtype=pd)
    if self.cond_features:
      self.cond_proj = nn.Dense(2 * f, dtype=self.dtype, param_dtype=pd)

  def conditioning(self, labels: Array | None, cond: Array | None):
    """Bias for both gates, broadcastable to [B, h, w, 2F] (or 0).

    Args:
      labels: [B] class labels (used iff num_classes > 0).
      cond: [B, h, w, F_c] conditioning map (used iff cond_features > 0).
    """
    bias = 0.0
    if self.num_classes:
      bias = self.label_embed(labels)[:, None, None, :]
    if self.cond_features:
      bias = bias + self.cond_proj(cond.astype(self.dtype))
    return bias

  def vertical(self, v_in: Array, bias) -> Array:
    """Vertical pre-activation: v_in [B, h + d, w + 2d, F] -> [B, h, w, 2F].

    v_in is already padded: d columns on both sides, d rows on top.

    For layer 0 the caller shifts the input down one row (rows < i only).
    """
    kernel = jnp.asarray(self.v_kernel, self.dtype)
    v_pre = self.valid_conv(v_in.astype(self.dtype), kernel)
    return v_pre + jnp.asarray(self.v_bias, self.dtype) + bias

  def horizontal(self, h_in: Array, v_pre: Array, bias, train: bool = False,
                 example_ids: Array | None = None) -> tuple[Array, Array]:
    """Horizontal stack without the residual.

    Args:
      h_in: [B, h, w + d, F] horizontal input, left-padded by d columns.
      v_pre: [B, h, w, 2F] vertical pre-activation of the same positions.
      bias: conditioning bias, broadcastable to [B, h, w, 2F].
      train: apply dropout to the gated activations (needs a "dropout" rng).
      example_ids: [B] int, the examples' ids for dropout (`ExampleDropout`).

    Returns:
      (res_{1x1}(g) [B, h, w, F] or None for the last layer,
       skip_{1x1}(g) [B, h, w, S]).
    """
    f, c = self.features, self.num_channels
    centre = group_mask(f, 2 * f, c, "A" if self.first else "B", gated_out=True)
    tap_mask = np.ones(self.h_kernel.shape, np.float32)
    tap_mask[0, -1] = centre
    kernel = jnp.asarray(self.h_kernel * tap_mask, self.dtype)
    link = jnp.asarray(self.link_kernel, self.dtype)
    h_pre = (self.valid_conv(h_in.astype(self.dtype), kernel)
             + v_pre @ link + jnp.asarray(self.h_bias, self.dtype) + bias)
    g = self.drop(gate(h_pre), train, example_ids)
    # The skip and residual 1x1 convs read the same g: one matmul for both.
    kernels = [self.skip_kernel * group_mask(f, self.skip_features, c, "B")]
    biases = [self.skip_bias]
    if not self.last:
      kernels.append(self.res_kernel * group_mask(f, f, c, "B"))
      biases.append(self.res_bias)
    out = (g @ jnp.asarray(jnp.concatenate(kernels, axis=1), self.dtype)
           + jnp.asarray(jnp.concatenate(biases), self.dtype))
    if self.last:
      return None, out
    skip, res = jnp.split(out, [self.skip_features], axis=-1)
    return res, skip


class CausalAttention(nn.Module):
  """Multi-head attention of each position over all earlier ones (raster
  order), as a residual for the horizontal stream (see the module doc).

  Attributes:
    features: F, the stream's width.
    num_heads: attention heads; F must be divisible by it.
    dropout: dropout rate on the residual at training time.
  """
  features: int
  num_heads: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    if self.features % self.num_heads:
      raise ValueError(f"features ({self.features}) must be divisible by "
                       f"attention_heads ({self.num_heads}).")
    heads, depth = self.num_heads, self.features // self.num_heads
    dense = functools.partial(nn.DenseGeneral, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    self.norm = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype)
    self.query = dense((heads, depth))
    self.key = dense((heads, depth))
    self.value = dense((heads, depth))
    # Zero: a new block starts as the identity on the stream.
    self.out = dense(self.features, axis=(-2, -1),
                     kernel_init=nn.initializers.zeros)
    self.start_key = self.param("start_key", nn.initializers.zeros,
                                (heads, depth), self.param_dtype)
    self.start_value = self.param("start_value", nn.initializers.zeros,
                                  (heads, depth), self.param_dtype)
    self.drop = ExampleDropout(self.dropout)

  def queries(self, h: Array, pos: Array) -> Array:
    """h [..., F], pos [..., P] -> [..., heads, F / heads]."""
    pos = jnp.broadcast_to(pos, h.shape[:-1] + pos.shape[-1:])
    return self.query(jnp.concatenate(
        [self.norm(h), pos.astype(self.dtype)], axis=-1))

  def keys_values(self, h: Array, emb: Array, pos: Array
                  ) -> tuple[Array, Array]:
    """Keys and values of positions: h, emb [..., F], pos [..., P] ->
    two [..., heads, F / heads]."""
    pos = jnp.broadcast_to(pos, h.shape[:-1] + pos.shape[-1:])
    kv_in = jnp.concatenate([self.norm(h), emb.astype(self.dtype),
                             pos.astype(self.dtype)], axis=-1)
    return self.key(kv_in), self.value(kv_in)

  def attend(self, q: Array, k: Array, v: Array, earlier: Array,
             train: bool = False, example_ids: Array | None = None) -> Array:
    """The residual for queries q [B, Nq, heads, D] over keys and values
    [B, N, heads, D]; earlier [Nq, N] bool says which keys each query sees
    (the start key is always seen). Returns [B, Nq, F]."""
    b = q.shape[0]
    start = lambda x: jnp.broadcast_to(jnp.asarray(x, k.dtype),
                                       (b, 1) + x.shape)
    k = jnp.concatenate([start(self.start_key), k], axis=1)
    v = jnp.concatenate([start(self.start_value), v], axis=1)
    mask = jnp.concatenate(
        [jnp.ones((earlier.shape[0], 1), bool), earlier], axis=1)
    y = nn.dot_product_attention(q, k, v, mask=mask[None, None],
                                 dtype=self.dtype)
    return self.drop(self.out(y), train, example_ids)

  def __call__(self, h: Array, emb: Array, train: bool = False,
               example_ids: Array | None = None) -> Array:
    """The residual for the whole grid: h, emb [B, H, W, F] -> [B, H, W, F]."""
    b, height, width, f = h.shape
    n = height * width
    pos = positions(height, width)
    q = self.queries(h.reshape(b, n, f), pos)
    k, v = self.keys_values(h.reshape(b, n, f), emb.reshape(b, n, f), pos)
    earlier = np.tril(np.ones((n, n), bool), k=-1)
    return self.attend(q, k, v, earlier, train, example_ids).reshape(
        b, height, width, f)


class GatedPixelCNN(nn.Module):
  """Gated PixelCNN over a grid of categorical values.

  Attributes:
    num_values: V, categories per channel (K codes for a VQ-VAE prior, 256 for
      raw pixels).
    num_channels: C, ordered channels per position (1, or 3 for R -> G -> B).
    features: F, hidden feature maps; must be divisible by `num_channels`.
    num_layers: gated layers after the first (mask A) layer.
    kernel_size: odd k; vertical kernels are (k//2 + 1) x k, horizontal ones
      1 x (k//2 + 1).
    head_features: hidden size of the output head, fed by the summed skips.
    num_classes: if > 0, class conditioning on `labels` [B].
    cond_features: if > 0, spatial conditioning on `cond` [B, H, W, F_c].
    attention_every: n > 0 puts a causal self-attention block after every
      n-th gated layer (`attention_layers`); 0: none. Needs C = 1.
    attention_heads: heads of each attention block; F must be divisible by it.
    dropout: dropout rate at training time (`train=True`); 0: none.
    dtype: computation dtype; logits are always returned as float32.
    param_dtype: parameter dtype.
    valid_conv: the gated layers' VALID convolution (see `GatedLayer`).
  """
  num_values: int
  num_channels: int = 1
  features: int = 128
  num_layers: int = 12
  kernel_size: int = 5
  head_features: int = 256
  num_classes: int = 0
  cond_features: int = 0
  attention_every: int = 0
  attention_heads: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  valid_conv: Callable[[Array, Array], Array] = valid_conv

  def setup(self):
    c, f, s = self.num_channels, self.features, self.head_features
    if f % c:
      raise ValueError(
          f"features ({f}) must be divisible by num_channels ({c}).")
    if s < c:
      raise ValueError(
          f"head_features ({s}) must be at least num_channels ({c}).")
    if self.kernel_size < 3 or self.kernel_size % 2 == 0:
      raise ValueError(f"kernel_size must be odd and >= 3, got "
                       f"{self.kernel_size}.")
    if self.attention_every and c != 1:
      raise ValueError(
          f"attention_every={self.attention_every} needs num_channels == 1 "
          f"(codes), got {c}: attention would mix a pixel's ordered "
          "channels. Set attention_every=0.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
    init = nn.initializers.lecun_normal()
    zeros = nn.initializers.zeros
    pd = self.param_dtype
    self.embedding = self.param(
        "embedding", nn.initializers.normal(1.0),
        (c, self.num_values, f // c), pd)
    self.layers = [
        GatedLayer(
            features=f, kernel_size=self.kernel_size, num_channels=c,
            skip_features=s, first=(l == 0), last=(l == self.num_layers),
            num_classes=self.num_classes, cond_features=self.cond_features,
            dropout=self.dropout, dtype=self.dtype, param_dtype=pd,
            valid_conv=self.valid_conv, name=f"layer_{l}")
        for l in range(self.num_layers + 1)
    ]
    self.attention = [
        CausalAttention(f, self.attention_heads, dropout=self.dropout,
                        dtype=self.dtype, param_dtype=pd,
                        name=f"attention_{l}")
        for l in attention_layers(self.num_layers, self.attention_every)
    ]
    self.head_hidden_kernel = self.param("head_hidden_kernel", init, (s, s), pd)
    self.head_hidden_bias = self.param("head_hidden_bias", zeros, (s,), pd)
    self.head_out_kernel = self.param(
        "head_out_kernel", init, (s, c * self.num_values), pd)
    self.head_out_bias = self.param(
        "head_out_bias", zeros, (c * self.num_values,), pd)

  def __call__(self, x: Array, labels: Array | None = None,
               cond: Array | None = None, train: bool = False,
               example_ids: Array | None = None) -> Array:
    """Logits of every value at every position.

    Args:
      x: [B, H, W, C] int values in [0, V).
      labels: [B] int class labels (needed iff num_classes > 0).
      cond: [B, H, W, F_c] conditioning map (needed iff cond_features > 0).
      train: apply dropout (needs a "dropout" rng when dropout > 0).
      example_ids: [B] int ids of the examples, whose dropout masks they pick
        (`ExampleDropout`; default 0 .. B-1).

    Returns:
      [B, H, W, C, V] float32 logits; those of (i, j, c) depend only on
      earlier pixels and on channels < c of pixel (i, j).
    """
    return self._forward(self.embed(x), labels, cond, train, example_ids)

  def logits(self, x: Array, labels: Array | None = None,
             cond: Array | None = None, train: bool = False,
             example_ids: Array | None = None) -> Array:
    """`__call__`, under the name the sampler calls (`vqjax.sampling`)."""
    return self(x, labels, cond, train, example_ids)

  def logits_from_onehot(self, onehot: Array, labels: Array | None = None,
                         cond: Array | None = None) -> Array:
    """Same as `__call__` on a (relaxed) one-hot input [B, H, W, C, V].

    The embedding lookup is a one-hot matmul, so this equals `__call__` on
    one-hot inputs and lets jax.grad see how logits depend on every input.
    """
    table = jnp.asarray(self.embedding, self.dtype)
    emb = jnp.einsum("...cv,cve->...ce", onehot.astype(self.dtype), table)
    return self._forward(emb.reshape(*emb.shape[:-2], -1), labels, cond)

  def embed(self, x: Array) -> Array:
    """Per-channel embeddings, concatenated: [..., C] int -> [..., F]."""
    table = jnp.asarray(self.embedding, self.dtype)
    emb = table[jnp.arange(self.num_channels), x]  # [..., C, F/C]
    return emb.reshape(*emb.shape[:-2], -1)

  def _check_conditioning(self, labels, cond):
    if self.num_classes and labels is None:
      raise ValueError("This model is class-conditional: pass labels [B].")
    if not self.num_classes and labels is not None:
      raise ValueError("labels given, but num_classes == 0.")
    if self.cond_features and cond is None:
      raise ValueError(
          "This model is spatially conditioned: pass cond [B, H, W, F_c].")
    if not self.cond_features and cond is not None:
      raise ValueError("cond given, but cond_features == 0.")

  def _forward(self, emb: Array, labels, cond, train: bool = False,
               example_ids: Array | None = None) -> Array:
    """emb [B, H, W, F] -> logits [B, H, W, C, V] float32."""
    self._check_conditioning(labels, cond)
    d = self.kernel_size // 2
    blocks = dict(zip(attention_layers(self.num_layers, self.attention_every),
                      self.attention))
    v_in = h_in = emb
    skip = 0.0
    for l, layer in enumerate(self.layers):
      bias = layer.conditioning(labels, cond)
      if l == 0:
        # Drop the last row and pad d + 1 on top: output row i reads input
        # rows i-d-1 .. i-1.
        v_pad = jnp.pad(v_in[:, :-1], ((0, 0), (d + 1, 0), (d, d), (0, 0)))
      else:
        v_pad = jnp.pad(v_in, ((0, 0), (d, 0), (d, d), (0, 0)))
      v_pre = layer.vertical(v_pad, bias)
      h_pad = jnp.pad(h_in, ((0, 0), (0, 0), (d, 0), (0, 0)))
      res, s = layer.horizontal(h_pad, v_pre, bias, train, example_ids)
      skip = skip + s
      v_in = gate(v_pre)
      if res is not None:
        h_in = res if l == 0 else h_in + res
      if l in blocks:
        h_in = h_in + blocks[l](h_in, emb, train, example_ids)
    return self.head(skip)

  def head(self, skip: Array) -> Array:
    """Summed skips [..., S] -> logits [..., C, V] float32."""
    c, s, v = self.num_channels, self.head_features, self.num_values
    w1 = self.head_hidden_kernel * group_mask(s, s, c, "B")
    w2 = self.head_out_kernel * group_mask(s, c * v, c, "B")
    y = nn.relu(skip)
    y = y @ jnp.asarray(w1, self.dtype) + jnp.asarray(
        self.head_hidden_bias, self.dtype)
    y = nn.relu(y)
    y = y @ jnp.asarray(w2, self.dtype) + jnp.asarray(
        self.head_out_bias, self.dtype)
    return y.reshape(*y.shape[:-1], c, v).astype(jnp.float32)

  # Incremental evaluation, used by the cached sampler in vqjax.sampling.

  def vertical_row(self, caches: list[Array], labels: Array | None = None,
                   cond_row: Array | None = None) -> tuple[Array, list[Array]]:
    """The vertical stack for one row i, from cached rows above it.

    Args:
      caches: per layer l, [B, d + 1, W + 2d, F]: the vertical input of layer l
        at rows i-d-1 .. i-1, zero-padded by d columns on both sides (and zero
        for rows above the image). For layer 0 that input is the embedding.
      labels: [B] class labels, if class-conditional.
      cond_row: [B, 1, W, F_c] conditioning map of row i, if conditioned.

    Returns:
      v_pre: [L + 1, B, W, 2F] vertical pre-activations of row i.
      caches: the caches of layers >= 1 advanced to rows i-d .. i. Layer 0's
        cache is returned as is: its row i becomes known only once sampled.
    """
    self._check_conditioning(labels, cond_row)
    d = self.kernel_size // 2
    v_pres, new_caches = [], []
    new_row = None
    for l, layer in enumerate(self.layers):
      bias = layer.conditioning(labels, cond_row)
      if l == 0:
        window = caches[0]
      else:
        window = jnp.concatenate([caches[l][:, 1:], new_row], axis=1)
      new_caches.append(window)
      v_pre = layer.vertical(window, bias)
      v_pres.append(v_pre[:, 0])
      if not layer.last:
        new_row = jnp.pad(gate(v_pre), ((0, 0), (0, 0), (d, d), (0, 0)))
    return jnp.stack(v_pres), new_caches

  def horizontal_pixel(self, buffers: list[Array], emb_pixel: Array,
                       v_pre: Array, labels: Array | None = None,
                       cond_pixel: Array | None = None,
                       kv_caches: list[tuple[Array, Array]] | None = None,
                       position: Array | None = None,
                       grid: tuple[int, int] | None = None
                       ) -> tuple[Array, list[Array], list[Array]]:
    """The horizontal stack, attention blocks and head at one pixel (i, j).

    Args:
      buffers: per layer l, [B, d, F]: the horizontal input of layer l at
        columns j-d .. j-1 of row i (zero left of the image).
      emb_pixel: [B, F] embedding of pixel (i, j); only channels before the
        one being sampled need to be valid.
      v_pre: [L + 1, B, 2F] vertical pre-activations at (i, j).
      labels: [B] class labels, if class-conditional.
      cond_pixel: [B, 1, 1, F_c] conditioning at (i, j), if conditioned.
      kv_caches: per attention block, its keys and values [B, H * W, heads,
        D] (`attention_kv`); entries at `position` and after are ignored.
      position: int32 raster index i * W + j (with attention).
      grid: (H, W), static (with attention).

    Returns:
      logits: [B, C, V] float32 at (i, j).
      inputs: per layer l, [B, F]: the horizontal input of layer l at (i, j),
        to push into `buffers` once the pixel is complete.
      block_inputs: per attention block, [B, F]: the stream it read at (i, j),
        for `attention_kv` once the pixel is complete.
    """
    self._check_conditioning(labels, cond_pixel)
    if len(kv_caches or ()) != len(self.attention):
      raise ValueError(f"pass kv_caches for the {len(self.attention)} "
                       "attention blocks (and position, grid).")
    blocks = dict(zip(attention_layers(self.num_layers, self.attention_every),
                      zip(self.attention, kv_caches or ())))
    if blocks:
      pos = positions(*grid)[position]
      earlier = (jnp.arange(grid[0] * grid[1]) < position)[None]
    h_in = emb_pixel
    inputs, block_inputs = [], []
    skip = 0.0
    for l, layer in enumerate(self.layers):
      inputs.append(h_in)
      bias = layer.conditioning(labels, cond_pixel)
      window = jnp.concatenate([buffers[l], h_in[:, None]], axis=1)
      res, s = layer.horizontal(
          window[:, None], v_pre[l][:, None, None], bias)
      skip = skip + s[:, 0, 0]
      if res is not None:
        h_in = res[:, 0, 0] if l == 0 else h_in + res[:, 0, 0]
      if l in blocks:
        block, (keys, values) = blocks[l]
        block_inputs.append(h_in)
        q = block.queries(h_in, pos)[:, None]
        h_in = h_in + block.attend(q, keys, values, earlier)[:, 0]
    return self.head(skip), inputs, block_inputs

  def attention_kv(self, block_inputs: list[Array], emb_pixel: Array,
                   position: Array, grid: tuple[int, int]
                   ) -> list[tuple[Array, Array]]:
    """The keys and values pixel (i, j) adds to each attention block's cache.

    Args:
      block_inputs: per attention block, [B, F] (from `horizontal_pixel`).
      emb_pixel: [B, F] embedding of the complete pixel.
      position: int32 raster index i * W + j.
      grid: (H, W), static.

    Returns:
      per attention block, (keys, values), each [B, heads, D].
    """
    pos = positions(*grid)[position]
    return [block.keys_values(h, emb_pixel, pos)
            for block, h in zip(self.attention, block_inputs)]
