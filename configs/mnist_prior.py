"""Gated PixelCNN prior over the 7x7 codes (K=512) of configs/mnist_vqvae.py.

  python train_prior.py --config=configs/mnist_prior.py --workdir=runs/prior \
      --config.vqvae_workdir=runs/vqvae
  python train_prior.py --config=configs/mnist_prior.py:conditional ...  # make demo

`conditional` conditions on the class label and trains twice as long: the
prior `make demo` ships (README, "Sample quality", has what each choice
measured).
"""

from vqjax.configs import prior_defaults, tiny_prior


def get_config(variant: str = ""):
  config = prior_defaults()
  config.vqvae_workdir = "runs/vqvae"
  config.train.learning_rate = 2e-3
  if variant == "conditional":
    config.model.conditional = True
    config.train.num_steps = 4000
  elif variant == "tiny":
    tiny_prior(config)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_prior.py; use '', "
                     "'conditional' or 'tiny'.")
  return config
