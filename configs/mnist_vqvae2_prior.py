"""Gated PixelCNN priors over a VQ-VAE-2's codes (configs/mnist_vqvae2.py).

Train the top prior (7x7 codes) and the bottom prior (14x14 codes,
conditioned on the top codes) on the same stage-1 run, then sample both:

  python train_prior.py --config=configs/mnist_vqvae2_prior.py --workdir=runs/vqvae2_top \\
      --config.vqvae_workdir=runs/vqvae2 --config.level=top
  python train_prior.py --config=configs/mnist_vqvae2_prior.py --workdir=runs/vqvae2_bottom \\
      --config.vqvae_workdir=runs/vqvae2 --config.level=bottom
  python sample.py --workdir=runs/vqvae2_bottom --top_workdir=runs/vqvae2_top
"""

from vqjax.configs import prior_defaults


def get_config(variant: str = ""):
  config = prior_defaults()
  config.vqvae_workdir = "runs/vqvae2"
  config.level = "top"
  if variant == "tiny":
    config.model.features = 8
    config.model.num_layers = 2
    config.model.kernel_size = 3
    config.model.head_features = 8
    config.model.cond_features = 8
    config.train.batch_size = 16
    config.train.num_steps = 4
    config.train.log_every = 2
    config.eval.every = 4
    config.eval.batch_size = 2000
    config.eval.num_samples = 4
    config.checkpoint.every = 4
    config.progress_bar = False
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_vqvae2_prior.py; "
                     "use '' or 'tiny'.")
  return config
