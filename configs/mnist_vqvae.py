"""VQ-VAE on MNIST: Sonnet's architecture, EMA codebook with dead-code restart.

  python train_vqvae.py --config=configs/mnist_vqvae.py --workdir=runs/vqvae
  python train_vqvae.py --config=configs/mnist_vqvae.py:tiny ...   # for tests
"""

from vqjax.configs import tiny_vqvae, vqvae_defaults


def get_config(variant: str = ""):
  config = vqvae_defaults()  # MNIST, 28x28 -> 7x7 codes, batch 128, 2000 steps
  if variant == "tiny":
    tiny_vqvae(config)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_vqvae.py; use '' or 'tiny'.")
  return config
