"""Gated PixelCNN prior over the 7x7 codes (K=512) of configs/mnist_vqvae.py.

  python train_prior.py --config=configs/mnist_prior.py --workdir=runs/prior \
      --config.vqvae_workdir=runs/vqvae
"""

from vqjax.configs import prior_defaults, tiny_prior


def get_config(variant: str = ""):
  config = prior_defaults()
  config.vqvae_workdir = "runs/vqvae"
  if variant == "conditional":
    config.model.conditional = True
  elif variant == "tiny":
    tiny_prior(config)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_prior.py; use '', "
                     "'conditional' or 'tiny'.")
  return config
