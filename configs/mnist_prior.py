"""Gated PixelCNN prior over the 7x7 codes (K=512) of configs/mnist_vqvae.py.

  python train_prior.py --config=configs/mnist_prior.py --workdir=runs/prior \
      --config.vqvae_workdir=runs/vqvae
  python train_prior.py --config=configs/mnist_prior.py:attention ...
  python train_prior.py --config=configs/mnist_prior.py:conditional ...  # make demo

The default is unconditional: 6000 steps at learning rate 2e-3, dropout 0.1
in the gated layers, samples and evaluation from a moving average of the
parameters (decay 0.999). `attention` adds a causal self-attention block after
every 4th gated layer (30% more time a step). `conditional` conditions on the
class label, trains 4000 steps without dropout or averaging: the prior
`make demo` ships. docs/results.md ("Sample quality") has what each choice
measured.
"""

from vqjax.configs import prior_defaults, tiny_prior


def get_config(variant: str = ""):
  config = prior_defaults()
  config.vqvae_workdir = "runs/vqvae"
  config.train.learning_rate = 2e-3
  config.train.num_steps = 6000
  config.train.ema_decay = 0.999
  config.model.dropout = 0.1
  if variant == "attention":
    config.model.attention_every = 4
  elif variant == "conditional":
    config.model.conditional = True
    config.train.num_steps = 4000
    config.train.ema_decay = 0.0
    config.model.dropout = 0.0
  elif variant == "tiny":  # The tests' prior: plain parameters, no dropout.
    tiny_prior(config)
    config.train.ema_decay = 0.0
    config.model.dropout = 0.0
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_prior.py; use '', "
                     "'attention', 'conditional' or 'tiny'.")
  return config
