"""VQ-VAE on CIFAR-10 with Sonnet's example settings.

128 hiddens, 32 residual hiddens, 2 residual layers, D=64, K=512, beta=0.25,
Adam 3e-4, EMA decay 0.99, batch 32; 32x32x3 -> 8x8 codes.
"""

from vqjax.configs import cifar10_vqvae_defaults


def get_config():
  config = cifar10_vqvae_defaults()
  return config
