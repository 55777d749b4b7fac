"""Flax Linen modules of vqjax, written with Flax's own layers.

Each module takes what it computes with as fields whose defaults are Flax's
(`conv: ModuleDef = nn.Conv`, ...); `vqjax.models.build` builds them from a
config and injects the XLA:CPU formulations when `config.model.kernels` asks.
"""

from vqjax.models import build
from vqjax.models.autoencoder import Autoencoder
from vqjax.models.code_prior import CodePrior
from vqjax.models.conditioning import TopCodeConditioner
from vqjax.models.pixelcnn import GatedPixelCNN
from vqjax.models.vector_quantizer import VectorQuantizer
from vqjax.models.vqvae import (VQVAE, Decoder, Encoder, ResidualStack,
                                to_float, to_uint8)
from vqjax.models.vqvae2 import VQVAE2

__all__ = ["VQVAE", "VQVAE2", "Autoencoder", "Encoder", "Decoder",
           "ResidualStack", "VectorQuantizer", "GatedPixelCNN", "CodePrior",
           "TopCodeConditioner", "build", "to_float", "to_uint8"]
