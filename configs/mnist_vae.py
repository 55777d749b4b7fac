"""The VQ-VAE's baselines on MNIST: a Gaussian VAE, or a plain autoencoder.

Same encoder, decoder, latent grid (7x7) and width (`quantizer.code_dim` = 64
channels), optimiser and steps as configs/mnist_vqvae.py; only the bottleneck
differs (`model.bottleneck`). Trained by `train_vqvae.py`, which logs
`bits_per_dim` (decoder likelihood + KL for the VAE; reconstruction only for
the AE) and, for the VAE, a grid of samples from N(0, I).

  python train_vqvae.py --config=configs/mnist_vae.py --workdir=runs/vae
  python train_vqvae.py --config=configs/mnist_vae.py:ae --workdir=runs/ae
  python train_vqvae.py --config=configs/mnist_vae.py:tiny ...   # for tests
"""

from vqjax.configs import tiny_vqvae, vqvae_defaults


def get_config(variant: str = ""):
  config = vqvae_defaults()
  config.model.bottleneck = "vae"
  if variant == "ae":
    config.model.bottleneck = "ae"
  elif variant == "tiny":
    tiny_vqvae(config)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_vae.py; use '', "
                     "'ae' or 'tiny'.")
  return config
