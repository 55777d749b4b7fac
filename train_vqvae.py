"""Stage 1: train a VQ-VAE.

  python train_vqvae.py --config=configs/mnist_vqvae.py --workdir=runs/vqvae \
      --config.train.num_steps=500

Running again with the same --workdir resumes from its latest checkpoint.
"""

from vqjax import cli
from vqjax.train import vqvae

if __name__ == "__main__":
  cli.train_main(vqvae.train_and_evaluate)
