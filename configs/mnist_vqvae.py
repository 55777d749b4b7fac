"""VQ-VAE on MNIST: Sonnet's architecture, EMA codebook with dead-code restart.

  python train_vqvae.py --config=configs/mnist_vqvae.py --workdir=runs/vqvae
  python train_vqvae.py --config=configs/mnist_vqvae.py:tiny ...   # for tests
"""

from vqjax.configs import vqvae_defaults


def get_config(variant: str = ""):
  config = vqvae_defaults()  # MNIST, 28x28 -> 7x7 codes, batch 128, 2000 steps
  if variant == "tiny":
    config.model.num_hiddens = 16
    config.model.num_residual_hiddens = 8
    config.model.num_residual_layers = 1
    config.quantizer.num_codes = 32
    config.quantizer.code_dim = 8
    config.train.batch_size = 16
    config.train.num_steps = 6
    config.train.log_every = 2
    config.eval.every = 6
    config.eval.batch_size = 2000
    config.eval.num_images = 8
    config.checkpoint.every = 3
    config.progress_bar = False
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_vqvae.py; use '' or 'tiny'.")
  return config
