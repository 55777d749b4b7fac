"""Flax Linen modules of vqjax."""

from vqjax.models.layers import ResidualStack, UpsampleConvTranspose
from vqjax.models.pixelcnn import GatedPixelCNN
from vqjax.models.vector_quantizer import VectorQuantizer
from vqjax.models.vqvae import VQVAE, Decoder, Encoder, to_float, to_uint8

__all__ = ["VQVAE", "Encoder", "Decoder", "VectorQuantizer", "GatedPixelCNN",
           "ResidualStack", "UpsampleConvTranspose", "to_float", "to_uint8"]
