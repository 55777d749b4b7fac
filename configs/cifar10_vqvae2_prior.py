"""Gated PixelCNN priors over a CIFAR-10 VQ-VAE-2's codes
(configs/cifar10_vqvae2.py: 4x4 top and 8x8 bottom codes, K=512 each).

  python train_prior.py --config=configs/cifar10_vqvae2_prior.py --workdir=runs/cifar_top \\
      --config.vqvae_workdir=runs/cifar_vqvae2 --config.level=top
  python train_prior.py --config=configs/cifar10_vqvae2_prior.py --workdir=runs/cifar_bottom \\
      --config.vqvae_workdir=runs/cifar_vqvae2 --config.level=bottom
  python sample.py --workdir=runs/cifar_bottom --top_workdir=runs/cifar_top
"""

from vqjax.configs import prior_defaults


def get_config(variant: str = ""):
  config = prior_defaults()
  config.data.name = "cifar10"
  config.vqvae_workdir = "runs/cifar_vqvae2"
  config.level = "top"
  config.model.features = 128
  config.model.num_layers = 12
  config.model.head_features = 256
  config.model.cond_features = 128
  config.train.batch_size = 64
  config.train.num_steps = 50_000
  config.train.learning_rate = 3e-4
  config.eval.every = 5_000
  config.checkpoint.every = 5_000
  if variant == "conditional":
    config.model.conditional = True
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of cifar10_vqvae2_prior.py; "
                     "use '' or 'conditional'.")
  return config
