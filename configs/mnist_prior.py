"""Gated PixelCNN prior over the 7x7 codes (K=512) of configs/mnist_vqvae.py.

  python train_prior.py --config=configs/mnist_prior.py --workdir=runs/prior \
      --config.vqvae_workdir=runs/vqvae
  python train_prior.py --config=configs/mnist_prior.py:attention ...
  python train_prior.py --config=configs/mnist_prior.py:conditional ...  # make demo

The default uses no labels: it is conditioned on 128 k-means clusters of the
training codes (`model.num_clusters`, vqjax/clusters.py; a sample draws its
cluster first), drops the cluster of 10% of the training examples so that it
also learns the prior without one (`model.label_dropout`, for classifier-free
guidance: sample and evaluate with `--guidance=0.5`), trains 5800 steps at
learning rate 2e-3 with 3x3 gated layers and dropout 0.1, and samples and
evaluates with a moving average of the parameters (decay 0.999); about 15
minutes on a 2-core CPU. `attention` is the 5x5, unguided prior with a causal
self-attention block after every 4th gated layer, 4500 steps. `conditional`
conditions on the class label instead, trains 4000 steps without dropout or
averaging: the prior `make demo` ships. docs/results.md ("Sample quality")
has what each choice measured.
"""

from vqjax.configs import prior_defaults, tiny_prior


def get_config(variant: str = ""):
  config = prior_defaults()
  config.vqvae_workdir = "runs/vqvae"
  config.train.learning_rate = 2e-3
  config.train.num_steps = 5800
  config.train.ema_decay = 0.999
  config.model.kernel_size = 3
  config.model.dropout = 0.1
  config.model.num_clusters = 128
  config.model.label_dropout = 0.1
  config.sample.guidance = 0.5
  config.eval.every = config.checkpoint.every = 2900
  if variant == "attention":  # as measured: kernel 5, no label dropout
    config.model.attention_every = 4
    config.model.kernel_size = 5
    config.model.label_dropout = 0.0
    config.sample.guidance = 0.0
    config.train.num_steps = 4500
    config.eval.every = config.checkpoint.every = 1500
  elif variant == "conditional":
    config.model.conditional = True
    config.model.num_clusters = 0
    config.model.kernel_size = 5
    config.model.label_dropout = 0.0
    config.sample.guidance = 0.0
    config.train.num_steps = 4000
    config.train.ema_decay = 0.0
    config.model.dropout = 0.0
    config.eval.every = config.checkpoint.every = 1000
  elif variant == "tiny":  # The tests' prior: plain parameters, no dropout.
    tiny_prior(config)
    config.train.ema_decay = 0.0
    config.model.dropout = 0.0
    config.model.num_clusters = 0
    config.model.label_dropout = 0.0
    config.sample.guidance = 0.0
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of mnist_prior.py; use '', "
                     "'attention', 'conditional' or 'tiny'.")
  return config
