"""VQ-VAE on CIFAR-10 with Sonnet's example settings.

128 hiddens, 32 residual hiddens, 2 residual layers, D=64, K=512, beta=0.25,
Adam 3e-4, EMA decay 0.99, batch 32; 32x32x3 -> 8x8 codes.
"""

from vqjax.configs import vqvae_defaults


def get_config():
  config = vqvae_defaults()
  config.data.name = "cifar10"
  config.train.batch_size = 32
  config.train.num_steps = 100_000
  config.eval.every = 5000
  config.checkpoint.every = 5000
  return config
