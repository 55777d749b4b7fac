"""Linen wrapper around the functional quantizer in `vqjax.quantizer`."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax import quantizer as vq

EMA_COLLECTION = "vq_ema"
RESTART_RNG = "restart"
DROPOUT_RNG = "dropout"  # Residual VQ's quantizer dropout.


def _codebook_init(key, shape, dtype=jnp.float32):
  # Sonnet: variance scaling, uniform, fan-in = D; leading axes (depths or
  # groups) are independent codebooks.
  batch = tuple(range(len(shape) - 2))
  return nn.initializers.variance_scaling(
      1.0, "fan_in", "uniform", in_axis=-1, out_axis=-2,
      batch_axis=batch)(key, shape, dtype)


class VectorQuantizer(nn.Module):
  """VQ bottleneck with a learnt (loss) or EMA codebook, and its variants.

  Loss variant (`use_ema=False`): the codebook is the param `codebook`,
  trained by `codebook_loss`. EMA variant: the codebook and its statistics
  live in the mutable collection `vq_ema` (`codebook`, `cluster_size`,
  `embed_sum`, `count`) and move by `vqjax.quantizer.ema_codebook(...).update`
  when called with `train=True` and `mutable=["vq_ema"]`; with
  `dead_code_threshold > 0` codes are restarted too, which needs the rng
  stream `restart`.

  Variants (all off by default, which is the VQ-VAE of van den Oord et al.):

  * `gradient="rotation"`: the rotation trick instead of straight-through.
  * `cosine`: codes and inputs l2-normalised (ViT-VQGAN); the EMA codebook
    and its restarts stay on the unit sphere.
  * `lookup_dim > 0`: `z_e` is projected (`project_in`, a Dense layer) to
    `lookup_dim` channels, looked up there and projected back
    (`project_out`) to `code_dim`; the codebook is `[K, lookup_dim]`.
  * `depth = N > 1`: residual VQ, codes `[..., N]`; one codebook per depth
    (`[N, K, d]`) or, with `shared_codebook`, one `[K, d]` for all depths;
    `dropout` is the probability that a training step uses only the first n
    depths, n uniform in 1..N (rng stream `dropout`).
  * `groups = G > 1`: grouped VQ, codes `[..., G]`, codebooks `[G, K, d/G]`.

  `depth` and `groups` do not combine, nor `depth` with `cosine`.

  `axis_name` names the data-parallel axis: EMA statistics, restarts and
  `counts` cover the global batch; leave it None outside `pmap`.

  `nearest_code` is the search, `[..., D], [K, D] -> [...]` int32:
  `vqjax.quantizer.nearest_code` unless a builder injects another formulation
  of the same function (`vqjax.xla_cpu.nearest_code`).
  """
  num_codes: int
  code_dim: int
  beta: float = 0.25
  use_ema: bool = True
  decay: float = 0.99
  epsilon: float = 1e-5
  dead_code_threshold: float = 0.0
  axis_name: str | None = None
  nearest_code: Callable[[jax.Array, jax.Array], jax.Array] = vq.nearest_code
  gradient: str = "straight_through"
  cosine: bool = False
  lookup_dim: int = 0
  depth: int = 1
  groups: int = 1
  shared_codebook: bool = False
  dropout: float = 0.0

  def setup(self):
    self._check()
    if self.lookup_dim:
      self.project_in = nn.Dense(self.lookup_dim, name="project_in")
      self.project_out = nn.Dense(self.code_dim, name="project_out")
    shape = self._table_shape()
    if self.use_ema:
      ema = self._ema_settings()
      stacked = len(shape) == 3

      def init(name):
        def make():
          codebook = _codebook_init(self.make_rng("params"), shape)
          state = (jax.vmap(ema.init) if stacked else ema.init)(codebook)
          return getattr(state, name)
        return self.variable(EMA_COLLECTION, name, make)
      self._ema = {name: init(name) for name in vq.EMAState._fields}
    else:
      self._codebook = self.param("codebook", _codebook_init, shape)

  def _check(self):
    name = type(self).__name__
    if self.depth < 1 or self.groups < 1:
      raise ValueError(f"{name}: depth and groups must be >= 1; got depth="
                       f"{self.depth}, groups={self.groups}.")
    if self.depth > 1 and self.groups > 1:
      raise ValueError(f"{name}: residual (depth={self.depth}) and grouped "
                       f"(groups={self.groups}) VQ do not combine; set one "
                       "of them to 1.")
    if self.depth > 1 and self.cosine:
      raise ValueError(f"{name}: residual VQ (depth={self.depth}) has no "
                       "cosine variant; set cosine=False or depth=1.")
    if self.lookup_dim < 0:
      raise ValueError(f"{name}: lookup_dim must be >= 0 (0: no "
                       f"projection); got {self.lookup_dim}.")
    if self.dim % self.groups:
      raise ValueError(f"{name}: groups={self.groups} must divide the lookup "
                       f"dimension {self.dim}.")
    if not 0.0 <= self.dropout <= 1.0:
      raise ValueError(f"{name}: dropout must be in [0, 1]; got "
                       f"{self.dropout}.")
    if self.dropout and self.depth == 1:
      raise ValueError(f"{name}: dropout={self.dropout} drops residual "
                       "depths; it needs depth > 1.")
    if self.shared_codebook and self.depth == 1:
      raise ValueError(f"{name}: shared_codebook shares one codebook between "
                       "residual depths; it needs depth > 1.")
    if self.dead_code_threshold > 0 and not self.use_ema:
      raise ValueError(f"{name}: dead_code_threshold > 0 needs the EMA "
                       "codebook (use_ema=True).")
    vq.estimator(self.gradient)  # Raises for an unknown estimator.

  @property
  def dim(self) -> int:
    """d, the dimension codes are looked up in."""
    return self.lookup_dim or self.code_dim

  @property
  def codebook_size(self) -> int:
    """K, the values each code channel takes."""
    return self.num_codes

  @property
  def code_channels(self) -> int:
    """C, the ordered codes per position (depth N or G groups, else 1)."""
    return max(self.depth, self.groups)

  def _table_shape(self) -> tuple[int, ...]:
    k, d = self.num_codes, self.dim
    if self.depth > 1 and not self.shared_codebook:
      return (self.depth, k, d)
    if self.groups > 1:
      return (self.groups, k, d // self.groups)
    return (k, d)

  def _ema_settings(self) -> vq.EMACodebook:
    return vq.ema_codebook(self.decay, self.epsilon, self.dead_code_threshold,
                           cosine=self.cosine)

  def codebook(self) -> jax.Array:
    """The stored codes: `[K, d]`, or `[N, K, d]` (residual, one codebook per
    depth) or `[G, K, d/G]` (grouped)."""
    if self.use_ema:
      return self._ema["codebook"].value
    return self._codebook

  def code_tables(self) -> jax.Array:
    """The codes each channel looks up, in lookup space: `[C, K, d_c]`
    float32 (l2-normalised for a cosine codebook; a shared residual codebook
    repeated over depths)."""
    table = jnp.asarray(self.codebook(), jnp.float32)
    if self.cosine:
      table = vq.l2_normalize(table)
    if table.ndim == 2:
      table = jnp.broadcast_to(table, (self.code_channels,) + table.shape)
    return table

  def ema_state(self) -> vq.EMAState:
    return vq.EMAState(**{k: v.value for k, v in self._ema.items()})

  def set_codebook(self, codebook: jax.Array) -> None:
    """Replaces the EMA codebook (e.g. with k-means centres, shaped as
    `codebook()`) and resets its statistics. Param codebooks are replaced in
    the param tree instead."""
    if not self.use_ema:
      raise ValueError("set_codebook needs the EMA variant; for the loss "
                       "variant write params['codebook'] directly.")
    ema = self._ema_settings()
    state = (jax.vmap(ema.init) if codebook.ndim == 3 else ema.init)(codebook)
    for name, value in state._asdict().items():
      self._ema[name].value = value

  def kmeans_codebook(self, z_e: jax.Array, key: jax.Array,
                      num_iters: int = 10) -> jax.Array:
    """k-means centres for `codebook()` from encoder outputs `z_e: [..., D]`
    (the global batch over `axis_name`): in lookup space, spherical for a
    cosine codebook, per group, and depth by depth on the residuals of the
    depths before (one k-means of `z_e` for a shared residual codebook)."""
    h = self._project_in(z_e)
    k = self.num_codes
    kmeans = lambda z, key: vq.kmeans(z, k, key, num_iters,  # noqa: E731
                                      self.axis_name, cosine=self.cosine)
    if self.groups > 1:
      parts = h.reshape(h.shape[:-1] + (self.groups, -1))
      keys = jax.random.split(key, self.groups)
      return jnp.stack([kmeans(parts[..., g, :], keys[g])
                        for g in range(self.groups)])
    if self.depth == 1 or self.shared_codebook:
      return kmeans(h, key)
    centres, residual = [], h
    for n, k_n in enumerate(jax.random.split(key, self.depth)):
      centres.append(kmeans(residual, k_n))
      residual = residual - vq.lookup(self.nearest_code(residual, centres[n]),
                                      centres[n])
    return jnp.stack(centres)

  def _project_in(self, z_e: jax.Array) -> jax.Array:
    z = jnp.asarray(z_e, jnp.float32)
    return self.project_in(z) if self.lookup_dim else z

  def _project_out(self, h: jax.Array) -> jax.Array:
    return self.project_out(h) if self.lookup_dim else h

  def lookup_codes(self, codes: jax.Array) -> jax.Array:
    """Codes `[..., C]` int -> the vectors the decoder sees, `[..., D]`
    float32."""
    tables = self.code_tables()
    if self.depth > 1:
      h = vq.residual_lookup(codes, tables)
    elif self.groups > 1:
      h = vq.grouped_lookup(codes, tables)
    else:
      h = vq.lookup(codes[..., 0], tables[0])
    return self._project_out(h)

  def _num_active(self, train: bool) -> jax.Array | None:
    """Residual depths this call uses (None: all)."""
    if not (train and self.dropout > 0) or self.is_initializing():
      return None
    k_drop, k_depth = jax.random.split(self.make_rng(DROPOUT_RNG))
    drop = jax.random.bernoulli(k_drop, self.dropout)
    return jnp.where(drop, jax.random.randint(k_depth, (), 1, self.depth + 1),
                     self.depth)

  def __call__(self, z_e: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Quantises `z_e: [..., D]`.

    Returns a dict with the keys of `vqjax.quantizer.QuantizeOutput`, all
    float32 whatever the dtype of `z_e`: `quantized` [..., D] (the decoder's
    input, with the chosen gradient estimator), `indices` ([...] int32; `[...,
    N]` residual, -1 at dropped depths; `[..., G]` grouped),
    `codebook_loss`, `commitment_loss` and `loss` (the terms that train
    params: both for the loss variant, commitment only with EMA; summed over
    residual depths, averaged over groups, as `loss` is), `counts` ([K], or
    [C, K] per depth or group; the global batch with `axis_name`) and, when
    codes were restarted, `restarted` (how many).

    Raises:
      ValueError: `train=True` on the EMA variant without `vq_ema` mutable
        (the codebook update would silently not happen).
    """
    h = self._project_in(z_e)  # Distances, losses and EMA in float32.
    codebook = self.ema_state() if self.use_ema else self.codebook()
    kwargs = dict(gradient=self.gradient, axis_name=self.axis_name,
                  search=self.nearest_code)
    if self.depth > 1:
      stack = codebook
      if self.shared_codebook:
        table = codebook.codebook if self.use_ema else codebook
        stack = jnp.broadcast_to(table, (self.depth,) + table.shape)
      q = vq.residual_quantize(h, stack, self.beta,
                               num_active=self._num_active(train), **kwargs)
      losses = {"codebook_loss": jnp.sum(q.codebook_loss),
                "commitment_loss": jnp.sum(q.commitment_loss)}
    elif self.groups > 1:
      q = vq.grouped_quantize(h, codebook, self.beta, cosine=self.cosine,
                              **kwargs)
      losses = {"codebook_loss": jnp.mean(q.codebook_loss),
                "commitment_loss": jnp.mean(q.commitment_loss)}
    else:
      q = vq.quantize(h, codebook, self.beta, cosine=self.cosine, **kwargs)
      losses = {"codebook_loss": q.codebook_loss,
                "commitment_loss": q.commitment_loss}
    out = {"quantized": self._project_out(q.quantized), "indices": q.indices,
           **losses, "counts": q.counts}
    out["loss"] = (out["commitment_loss"] if self.use_ema
                   else out["codebook_loss"] + out["commitment_loss"])
    if self.use_ema and train and not self.is_initializing():
      if not self.is_mutable_collection(EMA_COLLECTION):
        raise ValueError(
            "train=True updates the EMA codebook: call apply with "
            f"mutable=[{EMA_COLLECTION!r}] (and rngs={{{RESTART_RNG!r}: key}} "
            "for dead-code restarts), or pass train=False.")
      state, restarted = self._ema_update(h, q)
      if self.dead_code_threshold > 0:
        out["restarted"] = restarted
      for name, value in state._asdict().items():
        self._ema[name].value = value
    return out

  def _ema_update(self, h: jax.Array, q) -> tuple[vq.EMAState, jax.Array]:
    """The EMA step (and restarts) after quantising `h [..., d]` into `q`."""
    ema = self._ema_settings()
    state = self.ema_state()
    key = (self.make_rng(RESTART_RNG) if self.dead_code_threshold > 0
           else None)
    update = lambda s, z, i, k: ema.update(  # noqa: E731
        s, z, i, key=k, axis_name=self.axis_name)
    if self.depth > 1 and self.shared_codebook:
      # Every depth's assignments move the one codebook (dropped depths'
      # indices are -1 and count nowhere).
      d = h.shape[-1]
      new, info = update(state, q.residuals.reshape(-1, d),
                         q.indices.reshape(-1), key)
      return new, info.num_restarted
    if self.depth > 1 or self.groups > 1:
      count = self.code_channels
      if self.depth > 1:
        inputs, active = q.residuals, q.active
      else:
        inputs = jnp.moveaxis(h.reshape(h.shape[:-1] + (count, -1)), -2, 0)
        active = jnp.ones((count,), bool)
      indices = jnp.moveaxis(q.indices, -1, 0)
      keys = None if key is None else jax.random.split(key, count)
      new, info = jax.vmap(update, in_axes=(0, 0, 0, None if key is None
                                            else 0))(state, inputs, indices,
                                                     keys)
      # A dropped depth saw no vectors: keep its codebook and statistics as
      # they were rather than decaying its usage towards a restart.
      keep = lambda n, o: jnp.where(  # noqa: E731
          active.reshape((count,) + (1,) * (n.ndim - 1)), n, o)
      new = jax.tree_util.tree_map(keep, new, state)
      return new, jnp.sum(jnp.where(active, info.num_restarted, 0.0))
    new, info = update(state, h, q.indices, key)
    return new, info.num_restarted

