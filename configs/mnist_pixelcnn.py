"""Gated PixelCNN on raw MNIST pixels: 28x28, 256 values (bits/dim reported).

  python train_prior.py --config=configs/mnist_pixelcnn.py --workdir=runs/pixelcnn
  python train_prior.py --config=configs/mnist_pixelcnn.py:cpu ...  # sized for 2 CPU cores

Variants: `conditional` (class-conditional); `cpu`, a smaller model (32
features, 6 gated layers, head 64) that trains an epoch in minutes rather
than hours on a 2-core CPU, evaluated and sampled after every epoch.
"""

from vqjax.configs import prior_defaults

_EPOCH = 60000 // 32  # steps per MNIST epoch at batch 32


def get_config(variant: str = ""):
  config = prior_defaults()
  config.vqvae_workdir = ""  # raw pixels
  config.train.batch_size = 32
  config.eval.num_samples = 16
  if variant == "conditional":
    config.model.conditional = True
  elif variant == "cpu":
    config.model.features = 32
    config.model.num_layers = 6
    config.model.head_features = 64
    config.train.num_steps = 5 * _EPOCH
    config.train.learning_rate = 2e-3
    config.eval.every = _EPOCH
    config.checkpoint.every = _EPOCH
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_pixelcnn.py; use "
                     "'', 'conditional' or 'cpu'.")
  return config
