"""The bottlenecks without a learnt codebook (FSQ, LFQ), and the one place a
stage-1 model turns its quantizer fields into a quantizer module.

Every quantizer module maps `z_e: [..., D]` to a dict with the keys of
`vqjax.quantizer.QuantizeOutput` (`quantized`, `indices`, `codebook_loss`,
`commitment_loss`, `loss`, `counts`), all float32, and has

  codebook_size      K, the values of one code channel
  code_channels      C, ordered code channels per position
  lookup_codes(c)    codes [..., C] int -> decoder input [..., D]
  code_tables()      [C, K, d] the codes of each channel in lookup space

so a model's code grid is `[B, h, w, C]` int32 whatever the kind.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax import quantizer as vq
from vqjax.models.vector_quantizer import VectorQuantizer

KINDS = ("vq", "fsq", "lfq")
# LFQ's entropy over all 2^d codes costs [N, 2^d]; above this the factorised
# per-channel form (an upper bound on the codebook entropy) is used.
LFQ_EXACT_MAX_BITS = 12


def lfq_bits(num_codes: int) -> int:
  """d, the sign bits of an LFQ bottleneck with K = 2^d codes."""
  bits = int(round(math.log2(max(num_codes, 1))))
  if num_codes < 2 or 2 ** bits != num_codes:
    raise ValueError(f"LFQ needs num_codes = 2^d (d sign bits); got "
                     f"{num_codes}.")
  return bits


def codebook_size(kind: str, num_codes: int,
                  fsq_levels: Sequence[int]) -> int:
  """K, the values of one code channel: prod(levels) for FSQ, else
  `num_codes`."""
  return vq.fsq_codebook_size(fsq_levels) if kind == "fsq" else num_codes


def code_channels(kind: str, depth: int, groups: int) -> int:
  """C, the code channels per position: N residual depths or G groups of
  VQ, else 1."""
  return max(depth, groups) if kind == "vq" else 1


class _Projected(nn.Module):
  """Shared by FSQ and LFQ: a Dense projection to the quantizer's `d`
  channels and back when `code_dim != d` (as vector-quantize-pytorch)."""

  def _dims(self) -> int:
    raise NotImplementedError

  def _projections(self):
    if self.code_dim != self._dims():
      self.project_in = nn.Dense(self._dims(), name="project_in")
      self.project_out = nn.Dense(self.code_dim, name="project_out")

  def _in(self, z_e: jax.Array) -> jax.Array:
    z = jnp.asarray(z_e, jnp.float32)
    return self.project_in(z) if self.code_dim != self._dims() else z

  def _out(self, h: jax.Array) -> jax.Array:
    return self.project_out(h) if self.code_dim != self._dims() else h

  @property
  def code_channels(self) -> int:
    return 1


class FSQuantizer(_Projected):
  """Finite scalar quantisation (Mentzer et al. 2023) as a bottleneck.

  `z_e [..., D]` -> (Dense to d = len(levels) if D != d) -> `fsq_quantize`
  -> (Dense back to D). No codebook, no auxiliary loss (`loss` is 0); one
  code per position, K = prod(levels) values (`fsq_codes_to_indices`).

  Attributes:
    levels: d ints >= 2, e.g. (8, 5, 5, 5) ~ 2^10 codes.
    code_dim: D, the encoder's output and decoder's input channels.
    axis_name: `counts` cover the global batch over this axis.
  """
  levels: Sequence[int]
  code_dim: int
  axis_name: str | None = None

  def setup(self):
    self._projections()

  def _dims(self) -> int:
    return len(self.levels)

  @property
  def codebook_size(self) -> int:
    return vq.fsq_codebook_size(self.levels)

  def code_tables(self) -> jax.Array:
    """`[1, K, d]`, the grid points in index order."""
    return vq.fsq_codebook(self.levels)[None]

  def lookup_codes(self, codes: jax.Array) -> jax.Array:
    """`[..., 1]` int -> `[..., D]` float32."""
    return self._out(vq.fsq_indices_to_codes(codes[..., 0], self.levels))

  def __call__(self, z_e: jax.Array, train: bool = False) -> dict[str, Any]:
    """`z_e: [..., D]` -> the quantizer dict (see the module doc); `indices`
    [...] int32 in [0, K)."""
    del train
    codes = vq.fsq_quantize(self._in(z_e), self.levels)
    indices = vq.fsq_codes_to_indices(codes, self.levels)
    zero = jnp.zeros((), jnp.float32)
    return {"quantized": self._out(codes), "indices": indices,
            "codebook_loss": zero, "commitment_loss": zero, "loss": zero,
            "counts": vq.code_counts(indices, self.codebook_size,
                                     axis_name=self.axis_name)}


class LFQuantizer(_Projected):
  """Lookup-free quantisation (MAGVIT-v2, Yu et al. 2023) as a bottleneck.

  `z_e [..., D]` -> (Dense to d = log2 K if D != d) -> signs in {-1, +1}^d
  (straight-through) -> (Dense back to D). `loss` is the commitment term
  `beta ||h - sg[sign(h)]||^2` plus `entropy_weight` times MAGVIT-v2's
  entropy penalty (`lfq_entropy_loss`: per-sample entropy down, entropy of
  the global batch's average assignment up), computed over the global batch
  with `axis_name`; exactly over the 2^d codes up to d = 12, factorised per
  channel above. The dict also holds `sample_entropy` and
  `codebook_entropy`.

  Attributes:
    num_codes: K = 2^d, a power of two.
    code_dim: D.
    beta: commitment cost.
    entropy_weight: weight of the entropy penalty (0 disables it).
    temperature: of the soft assignments in the entropy penalty.
    axis_name: data-parallel axis.
  """
  num_codes: int
  code_dim: int
  beta: float = 0.25
  entropy_weight: float = 0.1
  temperature: float = 0.01
  axis_name: str | None = None

  def setup(self):
    self._projections()

  def _dims(self) -> int:
    return lfq_bits(self.num_codes)

  @property
  def codebook_size(self) -> int:
    return self.num_codes

  def code_tables(self) -> jax.Array:
    """`[1, K, d]`, the sign codes in index order."""
    return vq.lfq_codebook(self._dims())[None]

  def lookup_codes(self, codes: jax.Array) -> jax.Array:
    """`[..., 1]` int -> `[..., D]` float32."""
    return self._out(vq.lfq_indices_to_codes(codes[..., 0], self._dims()))

  def __call__(self, z_e: jax.Array, train: bool = False) -> dict[str, Any]:
    """`z_e: [..., D]` -> the quantizer dict (see the module doc)."""
    del train
    h = self._in(z_e)
    codes = vq.lfq_quantize(h)
    indices = vq.lfq_codes_to_indices(codes)
    commitment = vq.commitment_loss(h, codes, self.beta)
    entropy = vq.lfq_entropy_loss(
        h, self.temperature, self.axis_name,
        factorized=self._dims() > LFQ_EXACT_MAX_BITS)
    return {"quantized": self._out(codes), "indices": indices,
            "codebook_loss": jnp.zeros((), jnp.float32),
            "commitment_loss": commitment,
            "loss": commitment + self.entropy_weight * entropy.loss,
            "counts": vq.code_counts(indices, self.codebook_size,
                                     axis_name=self.axis_name),
            "sample_entropy": entropy.sample_entropy,
            "codebook_entropy": entropy.codebook_entropy}


def check_fields(kind: str, *, gradient: str = "straight_through",
                 cosine: bool = False, lookup_dim: int = 0, depth: int = 1,
                 groups: int = 1, dropout: float = 0.0,
                 shared_codebook: bool = False,
                 fsq_levels: Sequence[int] = (8, 5, 5, 5),
                 num_codes: int = 512) -> None:
  """Raises ValueError for quantizer settings that do not apply to `kind`
  (they would otherwise be ignored silently)."""
  if kind not in KINDS:
    raise ValueError(f"quantizer kind {kind!r} is not one of {KINDS}.")
  if kind == "vq":
    return
  vq_only = {"gradient": (gradient, "straight_through"), "cosine": (cosine, False),
             "lookup_dim": (lookup_dim, 0), "depth": (depth, 1),
             "groups": (groups, 1), "dropout": (dropout, 0.0),
             "shared_codebook": (shared_codebook, False)}
  for name, (value, default) in vq_only.items():
    if value != default:
      raise ValueError(f"quantizer {name}={value!r} applies to kind='vq' "
                       f"only (kind={kind!r} has no codebook); leave it "
                       f"{default!r}.")
  if kind == "fsq":
    vq.fsq_codebook_size(fsq_levels)  # Raises for bad levels.
  if kind == "lfq":
    lfq_bits(num_codes)


def quantizer_for(host: nn.Module) -> nn.Module:
  """The quantizer a stage-1 model (`VQVAE`, `VQVAE2`) describes with its
  fields `kind`, `num_codes`, `code_dim`, `beta`, `use_ema`, ..., made in the
  host's `setup` (one call per code level)."""
  h = host
  check_fields(h.kind, gradient=h.gradient, cosine=h.cosine,
               lookup_dim=h.lookup_dim, depth=h.depth, groups=h.groups,
               dropout=h.dropout, shared_codebook=h.shared_codebook,
               fsq_levels=h.fsq_levels, num_codes=h.num_codes)
  if h.kind == "fsq":
    return FSQuantizer(tuple(int(l) for l in h.fsq_levels), h.code_dim,
                       h.axis_name)
  if h.kind == "lfq":
    return LFQuantizer(h.num_codes, h.code_dim, h.beta, h.entropy_weight,
                       h.entropy_temperature, h.axis_name)
  return VectorQuantizer(
      h.num_codes, h.code_dim, h.beta, h.use_ema, h.decay, h.epsilon,
      h.dead_code_threshold, h.axis_name, h.nearest_code,
      gradient=h.gradient, cosine=h.cosine, lookup_dim=h.lookup_dim,
      depth=h.depth, groups=h.groups, shared_codebook=h.shared_codebook,
      dropout=h.dropout)

