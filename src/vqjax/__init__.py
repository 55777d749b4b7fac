"""vqjax: VQ-VAE, Gated PixelCNN priors and friends in JAX/Flax.

The quantizer's maths is importable without Flax:

  from vqjax import nearest_code, straight_through, codebook_loss, ema_update
"""

from vqjax.quantizer import (
    EMAState,
    code_counts,
    codebook_loss,
    commitment_loss,
    ema_cluster_size,
    ema_init,
    ema_update,
    fraction_used,
    kmeans,
    lookup,
    nearest_code,
    perplexity,
    quantize,
    restart_dead_codes,
    squared_distances,
    straight_through,
    usage_stats,
)

__version__ = "0.1.0"

__all__ = [
    "EMAState", "code_counts", "codebook_loss", "commitment_loss",
    "ema_cluster_size", "ema_init", "ema_update", "fraction_used", "kmeans",
    "lookup", "nearest_code", "perplexity", "quantize", "restart_dead_codes",
    "squared_distances", "straight_through", "usage_stats",
]
