"""VQ-VAE-2 on CIFAR-10 (32x32x3): 8x8 bottom codes, 4x4 top codes.

configs/cifar10_vqvae.py's settings with a top level; `:16` gives 16x16
bottom / 8x8 top codes instead.

  python train_vqvae.py --config=configs/cifar10_vqvae2.py --workdir=runs/cifar_vqvae2
"""

from vqjax.configs import cifar10_vqvae_defaults


def get_config(variant: str = ""):
  config = cifar10_vqvae_defaults()
  config.model.num_downsamples = 2  # 32x32 -> 8x8 bottom codes
  config.model.top_downsamples = 1  # 8x8 -> 4x4 top codes
  if variant == "16":
    config.model.num_downsamples = 1  # 16x16 bottom, 8x8 top
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of cifar10_vqvae2.py; use "
                     "'' or '16'.")
  return config
