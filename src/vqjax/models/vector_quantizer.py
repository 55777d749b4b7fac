"""Linen wrapper around the functional quantizer in `vqjax.quantizer`."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax import quantizer as vq

EMA_COLLECTION = "vq_ema"
RESTART_RNG = "restart"


def _codebook_init(key, shape, dtype=jnp.float32):
  # Sonnet: variance scaling, uniform, fan-in = D.
  return nn.initializers.variance_scaling(
      1.0, "fan_in", "uniform", in_axis=-1, out_axis=-2)(key, shape, dtype)


class VectorQuantizer(nn.Module):
  """VQ bottleneck with a learnt (loss) or EMA codebook.

  Loss variant (`use_ema=False`): the codebook is the param `codebook [K, D]`,
  trained by `codebook_loss`. EMA variant: the codebook and its statistics live
  in the mutable collection `vq_ema` (`codebook`, `cluster_size`, `embed_sum`,
  `count`) and are updated by `vqjax.quantizer.ema_update` when called with
  `train=True` and `mutable=["vq_ema"]`; with `dead_code_threshold > 0` codes
  are restarted too, which needs the rng stream `restart`.

  `axis_name` names the data-parallel axis so EMA statistics are summed over
  devices during training; leave it None outside `pmap`.

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

  def setup(self):
    shape = (self.num_codes, self.code_dim)
    if self.use_ema:
      def init(name):
        def make():
          codebook = _codebook_init(self.make_rng("params"), shape)
          return getattr(vq.ema_init(codebook), name)
        return self.variable(EMA_COLLECTION, name, make)
      self._ema = {name: init(name) for name in vq.EMAState._fields}
    else:
      self._codebook = self.param("codebook", _codebook_init, shape)

  def codebook(self) -> jax.Array:
    """The current codes `[K, D]`."""
    if self.use_ema:
      return self._ema["codebook"].value
    return self._codebook

  def ema_state(self) -> vq.EMAState:
    return vq.EMAState(**{k: v.value for k, v in self._ema.items()})

  def set_codebook(self, codebook: jax.Array) -> None:
    """Replaces the EMA codebook (e.g. with k-means centres) and resets its
    statistics. Param codebooks are replaced in the param tree instead."""
    if not self.use_ema:
      raise ValueError("set_codebook needs the EMA variant; for the loss "
                       "variant write params['codebook'] directly.")
    for name, value in vq.ema_init(codebook)._asdict().items():
      self._ema[name].value = value

  def __call__(self, z_e: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Quantises `z_e: [..., D]`.

    Returns a dict: `quantized` [..., D] float32 (straight-through; float32
    whatever the dtype of `z_e`), `indices` [...]
    int32, `codebook_loss`, `commitment_loss`, `loss` (the terms that train
    params: both for the loss variant, commitment only with EMA), `counts` [K]
    (local code usage) and, when codes were restarted, `restarted` (how many).

    Raises:
      ValueError: `train=True` on the EMA variant without `vq_ema` mutable
        (the codebook update would silently not happen).
    """
    z_e = z_e.astype(jnp.float32)  # Distances, losses and EMA in float32.
    codebook = self.codebook()
    indices = self.nearest_code(z_e, codebook)
    z_q = vq.lookup(indices, codebook)
    out = {
        "quantized": vq.straight_through(z_e, z_q),
        "indices": indices,
        "codebook_loss": vq.codebook_loss(z_e, z_q),
        "commitment_loss": vq.commitment_loss(z_e, z_q, self.beta),
        "counts": vq.code_counts(indices, self.num_codes),
    }
    if self.use_ema:
      out["loss"] = out["commitment_loss"]
      if train and not self.is_initializing():
        if not self.is_mutable_collection(EMA_COLLECTION):
          raise ValueError(
              "train=True updates the EMA codebook: call apply with "
              f"mutable=[{EMA_COLLECTION!r}] (and rngs={{{RESTART_RNG!r}: key}} "
              "for dead-code restarts), or pass train=False.")
        state = vq.ema_update(self.ema_state(), z_e, indices, self.decay,
                              self.epsilon, self.axis_name)
        if self.dead_code_threshold > 0:
          state, dead = vq.restart_dead_codes(
              state, z_e, self.make_rng(RESTART_RNG), self.dead_code_threshold,
              self.decay, self.axis_name)
          out["restarted"] = jnp.sum(dead.astype(jnp.float32))
        for name, value in state._asdict().items():
          self._ema[name].value = value
    else:
      out["loss"] = out["codebook_loss"] + out["commitment_loss"]
    return out
