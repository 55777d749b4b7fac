"""Stage 1: train a VQ-VAE.

  python train_vqvae.py --config=configs/mnist_vqvae.py --workdir=runs/vqvae \
      --config.train.num_steps=500

Running again with the same --workdir resumes from its latest checkpoint.
"""

from absl import flags
from ml_collections import config_flags

from vqjax import cli
from vqjax.train import vqvae

config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                 lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics, images.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main():
  vqvae.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
