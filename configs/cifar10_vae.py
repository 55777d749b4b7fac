"""The VQ-VAE's baselines on CIFAR-10: configs/cifar10_vqvae.py with a
Gaussian VAE (default) or autoencoder (`:ae`) bottleneck on the same 8x8x64
latent grid, for the paper's bits/dim comparison (VAE 4.51, VQ-VAE 4.67).

  python train_vqvae.py --config=configs/cifar10_vae.py --workdir=runs/cifar_vae
"""

from vqjax.configs import cifar10_vqvae_defaults


def get_config(variant: str = ""):
  config = cifar10_vqvae_defaults()
  config.model.bottleneck = "vae"
  if variant == "ae":
    config.model.bottleneck = "ae"
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of cifar10_vae.py; use '' "
                     "or 'ae'.")
  return config
