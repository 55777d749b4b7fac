"""VQ-VAE-2 on MNIST: 28x28 -> 14x14 bottom codes -> 7x7 top codes.

The blocks, codebooks (K=512, D=64 per level, EMA, dead-code restarts),
optimiser and steps of configs/mnist_vqvae.py; the bottom encoder downsamples
once (`model.num_downsamples`) and the top encoder once more
(`model.top_downsamples`).

  python train_vqvae.py --config=configs/mnist_vqvae2.py --workdir=runs/vqvae2
  python train_vqvae.py --config=configs/mnist_vqvae2.py:tiny ...  # for tests

Priors: configs/mnist_vqvae2_prior.py with --config.level=top|bottom.
"""

from vqjax.configs import tiny_vqvae, vqvae_defaults


def get_config(variant: str = ""):
  config = vqvae_defaults()
  config.model.num_downsamples = 1  # 28x28 -> 14x14 bottom codes
  config.model.top_downsamples = 1  # 14x14 -> 7x7 top codes
  if variant == "tiny":
    tiny_vqvae(config)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_vqvae2.py; use '' "
                     "or 'tiny'.")
  return config
