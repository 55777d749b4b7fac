"""Gated PixelCNN on raw CIFAR-10 pixels: 32x32x3, R -> G -> B, 256 values.

Sized like the Gated PixelCNN paper's CIFAR-10 models, scaled for one host.
"""

from vqjax.configs import prior_defaults


def get_config(variant: str = ""):
  config = prior_defaults()
  config.vqvae_workdir = ""
  config.data.name = "cifar10"
  config.model.features = 192        # divisible by 3 channel groups
  config.model.num_layers = 15
  config.model.head_features = 384
  config.train.batch_size = 32
  config.train.num_steps = 200_000
  config.train.learning_rate = 3e-4
  config.eval.every = 10_000
  config.checkpoint.every = 5_000
  if variant == "conditional":
    config.model.conditional = True
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of cifar10_pixelcnn.py.")
  return config
