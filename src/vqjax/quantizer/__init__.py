"""Vector quantisation as plain, jit-able functions (JAX and NumPy only).

The maths of the VQ-VAE bottleneck (van den Oord et al. 2017) and its
successors, usable from any JAX model:

  z_e  [..., D]  encoder output        codebook  [K, D]
  indices = nearest_code(z_e, codebook)                  [...] int32
  z_q     = lookup(indices, codebook)                    [..., D]
  z_st    = straight_through(z_e, z_q)   # forward z_q, gradient to z_e
  z_rot   = rotation_trick(z_e, z_q)     # forward z_q, rotated gradient
  loss    = codebook_loss(z_e, z_q) + commitment_loss(z_e, z_q, beta)

or in one call, `out = quantize(z_e, codebook, beta, gradient="rotation")`,
a `QuantizeOutput` NamedTuple (`out.indices`, or `out["indices"]`).

An EMA codebook keeps its settings with it, as an optax transformation does:

  ema = ema_codebook(decay=0.99, epsilon=1e-5, dead_code_threshold=1.0)
  state = ema.init(codebook)                       # EMAState
  out = quantize(z_e, state, beta=0.25)            # loss: commitment only
  state, info = ema.update(state, z_e, out.indices, key=key, axis_name="batch")
  stats = usage_stats(out.indices, codebook=state, axis_name="batch")

Variants:

* cosine / low-dimensional codebooks (ViT-VQGAN): `l2_normalize`,
  `cosine_nearest_code`, `quantize(..., cosine=True)`,
  `ema_codebook(..., cosine=True)`, `kmeans(..., cosine=True)`;
* FSQ (Mentzer et al. 2023): `fsq_bound`, `fsq_quantize`,
  `fsq_codes_to_indices`, `fsq_indices_to_codes`, `fsq_codebook`;
* LFQ (MAGVIT-v2): `lfq_quantize`, `lfq_codes_to_indices`,
  `lfq_indices_to_codes`, `lfq_entropy_loss`, `lfq_codebook`;
* residual VQ (SoundStream) and grouped VQ: `residual_quantize`,
  `residual_lookup`, `grouped_quantize`, `grouped_lookup`.

One dtype rule: distances, losses, statistics and quantizer outputs are
float32 whatever the input dtype. Arguments are checked when a function is
traced (shapes, dtypes, known values such as `decay` or `beta`), with a
ValueError naming the argument.

Every function that summarises a batch takes an optional `axis_name`: inside
`pmap`/`shard_map` the statistics are reduced over it (`psum`/`pmean`, or an
`all_gather` for k-means) so N devices compute exactly what one device would
on the global batch, with no host synchronisation.
"""

from vqjax.quantizer._ema import (
    EMACodebook,
    EMAInfo,
    ema_cluster_size,
    ema_codebook,
    ema_init,
    ema_update,
    kmeans,
    restart_dead_codes,
)
from vqjax.quantizer._fsq import (
    fsq_bound,
    fsq_codebook,
    fsq_codebook_size,
    fsq_codes_to_indices,
    fsq_indices_to_codes,
    fsq_quantize,
)
from vqjax.quantizer._lfq import (
    LFQEntropy,
    lfq_codebook,
    lfq_codes_to_indices,
    lfq_entropy_loss,
    lfq_indices_to_codes,
    lfq_quantize,
)
from vqjax.quantizer._multi import (
    ResidualQuantizeOutput,
    grouped_lookup,
    grouped_quantize,
    residual_lookup,
    residual_quantize,
)
from vqjax.quantizer._vq import (
    EMAState,
    QuantizeOutput,
    UsageStats,
    code_counts,
    codebook_loss,
    commitment_loss,
    cosine_nearest_code,
    estimator,
    fraction_used,
    l2_normalize,
    lookup,
    nearest_code,
    perplexity,
    quantize,
    rotation_trick,
    squared_distances,
    straight_through,
    usage_stats,
)

__all__ = [
    # Nearest-code VQ.
    "squared_distances", "nearest_code", "lookup", "straight_through",
    "rotation_trick", "estimator", "codebook_loss", "commitment_loss",
    "quantize", "QuantizeOutput",
    # Usage statistics.
    "code_counts", "perplexity", "fraction_used", "usage_stats", "UsageStats",
    # EMA codebooks, restarts, k-means.
    "EMAState", "ema_codebook", "EMACodebook", "EMAInfo", "ema_init",
    "ema_update", "ema_cluster_size", "restart_dead_codes", "kmeans",
    # Cosine codebooks.
    "l2_normalize", "cosine_nearest_code",
    # FSQ.
    "fsq_bound", "fsq_quantize", "fsq_codes_to_indices",
    "fsq_indices_to_codes", "fsq_codebook", "fsq_codebook_size",
    # LFQ.
    "lfq_quantize", "lfq_codes_to_indices", "lfq_indices_to_codes",
    "lfq_codebook", "lfq_entropy_loss", "LFQEntropy",
    # Residual and grouped VQ.
    "residual_quantize", "residual_lookup", "ResidualQuantizeOutput",
    "grouped_quantize", "grouped_lookup",
]
