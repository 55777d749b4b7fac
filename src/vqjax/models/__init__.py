"""Flax Linen modules of vqjax, written with Flax's own layers."""

from vqjax.models.pixelcnn import GatedPixelCNN
from vqjax.models.vector_quantizer import VectorQuantizer
from vqjax.models.vqvae import (VQVAE, Decoder, Encoder, ResidualStack,
                                to_float, to_uint8)

__all__ = ["VQVAE", "Encoder", "Decoder", "ResidualStack", "VectorQuantizer",
           "GatedPixelCNN", "to_float", "to_uint8"]
