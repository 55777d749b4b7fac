"""Gated PixelCNN prior over the 7x7 codes (K=512) of configs/mnist_vqvae.py.

  python train_prior.py --config=configs/mnist_prior.py --workdir=runs/prior \
      --config.vqvae_workdir=runs/vqvae
"""

from vqjax.configs import prior_defaults


def get_config(variant: str = ""):
  config = prior_defaults()
  config.vqvae_workdir = "runs/vqvae"
  if variant == "conditional":
    config.model.conditional = True
  elif variant == "tiny":
    config.model.features = 8
    config.model.num_layers = 2
    config.model.kernel_size = 3
    config.model.head_features = 8
    config.train.batch_size = 16
    config.train.num_steps = 4
    config.train.log_every = 2
    config.eval.every = 4
    config.eval.batch_size = 2000
    config.eval.num_samples = 4
    config.checkpoint.every = 4
    config.progress_bar = False
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_prior.py; use '', "
                     "'conditional' or 'tiny'.")
  return config
