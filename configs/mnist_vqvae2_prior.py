"""Gated PixelCNN priors over a VQ-VAE-2's codes (configs/mnist_vqvae2.py).

Train the top prior (7x7 codes) and the bottom prior (14x14 codes,
conditioned on the top codes) on the same stage-1 run, then sample both:

  python train_prior.py --config=configs/mnist_vqvae2_prior.py:top --workdir=runs/vqvae2_top \\
      --config.vqvae_workdir=runs/vqvae2
  python train_prior.py --config=configs/mnist_vqvae2_prior.py:bottom --workdir=runs/vqvae2_bottom \\
      --config.vqvae_workdir=runs/vqvae2
  python sample.py --workdir=runs/vqvae2_bottom --top_workdir=runs/vqvae2_top

The variants `top` (also the default) and `bottom` set `level` and that
level's settings: both train at learning rate 2e-3 with dropout 0.1 and a
moving average of the parameters (decay 0.999); the top prior (7x7) trains
4000 steps with causal self-attention after every 4th gated layer, the bottom
prior (14x14, 4x the positions per step) 1000 steps. docs/results.md ("The
model family") has what they measured.
"""

from vqjax.configs import prior_defaults, tiny_prior


def get_config(variant: str = ""):
  config = prior_defaults()
  config.vqvae_workdir = "runs/vqvae2"
  config.level = "top"
  config.train.learning_rate = 2e-3
  config.train.ema_decay = 0.999
  config.model.dropout = 0.1
  if variant in ("", "top"):
    config.train.num_steps = 4000
    config.model.attention_every = 4
  elif variant == "bottom":
    config.level = "bottom"
    config.train.num_steps = 1000
  elif variant == "tiny":  # The tests' prior: plain parameters, no dropout.
    tiny_prior(config)
    config.train.ema_decay = 0.0
    config.model.dropout = 0.0
  else:
    raise ValueError(f"Unknown variant {variant!r} of mnist_vqvae2_prior.py; "
                     "use 'top', 'bottom' or 'tiny'.")
  return config
