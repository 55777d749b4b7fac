"""Stage 1: train a VQ-VAE, VQ-VAE-2, AE or VAE (`config.model.bottleneck`).

  python train_vqvae.py --config=configs/mnist_vqvae.py --workdir=runs/vqvae \
      --config.train.num_steps=500

Running again with the same --workdir resumes from its latest checkpoint.
"""

from vqjax import cli
from vqjax.train import stage1

if __name__ == "__main__":
  cli.train_main(stage1.train_and_evaluate)
