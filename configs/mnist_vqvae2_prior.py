"""Gated PixelCNN priors over a VQ-VAE-2's codes (configs/mnist_vqvae2.py).

Train the top prior (7x7 codes) and the bottom prior (14x14 codes,
conditioned on the top codes) on the same stage-1 run, then sample both:

  python train_prior.py --config=configs/mnist_vqvae2_prior.py:top --workdir=runs/vqvae2_top \\
      --config.vqvae_workdir=runs/vqvae2
  python train_prior.py --config=configs/mnist_vqvae2_prior.py:bottom --workdir=runs/vqvae2_bottom \\
      --config.vqvae_workdir=runs/vqvae2
  python sample.py --workdir=runs/vqvae2_bottom --top_workdir=runs/vqvae2_top

The variants `top` (also the default) and `bottom` set `level` and that
level's settings.
"""

from vqjax.configs import prior_defaults, tiny_prior


def get_config(variant: str = ""):
  config = prior_defaults()
  config.vqvae_workdir = "runs/vqvae2"
  config.level = "top"
  if variant in ("", "top"):
    pass
  elif variant == "bottom":
    config.level = "bottom"
  elif variant == "tiny":
    tiny_prior(config)
  else:
    raise ValueError(f"Unknown variant {variant!r} of mnist_vqvae2_prior.py; "
                     "use 'top', 'bottom' or 'tiny'.")
  return config
