"""Stage 2: train a Gated PixelCNN prior over a VQ-VAE's codes (or raw pixels).

  python train_prior.py --config=configs/mnist_prior.py --workdir=runs/prior \
      --config.vqvae_workdir=runs/vqvae
  python train_prior.py --config=configs/mnist_pixelcnn.py --workdir=runs/pixelcnn

Running again with the same --workdir resumes from its latest checkpoint.
"""

from vqjax import cli
from vqjax.train import prior

if __name__ == "__main__":
  cli.train_main(prior.train_and_evaluate)
