"""Gated PixelCNN on raw MNIST pixels: 28x28, 256 values (bits/dim reported).

  python train_prior.py --config=configs/mnist_pixelcnn.py --workdir=runs/pixelcnn
"""

from vqjax.configs import prior_defaults


def get_config(variant: str = ""):
  config = prior_defaults()
  config.vqvae_workdir = ""  # raw pixels
  config.train.batch_size = 32
  config.eval.num_samples = 16
  if variant == "conditional":
    config.model.conditional = True
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_pixelcnn.py; use '' "
                     "or 'conditional'.")
  return config
