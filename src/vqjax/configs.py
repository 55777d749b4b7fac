"""Default config groups shared by the files in `configs/`.

The files in `configs/` start from these and change what their experiment
needs, so each file reads as a list of differences.
"""

import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work, with what to set instead."""


# Keys that must be whole numbers >= 1 (when the config has them): steps
# between events, and batch sizes.
POSITIVE_KEYS = ("train.batch_size", "train.log_every", "eval.every",
                 "eval.batch_size", "checkpoint.every", "checkpoint.max_to_keep")


def _get(config, dotted: str):
  for key in dotted.split("."):
    if not hasattr(config, "get") or key not in config:
      return None
    config = config[key]
  return config


def check_values(config: ml_collections.ConfigDict) -> None:
  """Raises for a value no run can use: a count of steps or a batch size
  below 1 (`POSITIVE_KEYS`), or a negative `train.num_steps`."""
  for key in POSITIVE_KEYS:
    value = _get(config, key)
    if value is not None and not value >= 1:
      raise ConfigError(f"--config.{key}={value} cannot work; set it to a "
                        "whole number >= 1.")
  steps = _get(config, "train.num_steps")
  if steps is not None and steps < 0:
    raise ConfigError(f"--config.train.num_steps={steps} is negative; set "
                      "the number of steps to train for.")


def downsampling(config: ml_collections.ConfigDict) -> int:
  """How many times smaller a stage-1 model's coarsest code grid is than
  its images (2^(num_downsamples + top_downsamples)); 1 for other models."""
  model = config.get("model") or {}
  if "num_downsamples" not in model:
    return 1
  return 2 ** (int(model["num_downsamples"]) +
               int(model.get("top_downsamples", 0) or 0))


def check_image_fits(config: ml_collections.ConfigDict,
                     shape: tuple[int, ...]) -> None:
  """Raises unless images of `shape` (H, W, ...) fit `config`'s stage-1
  model: each of its stride-2 downsamplings needs an even size, so H and W
  must be multiples of `downsampling(config)`."""
  factor = downsampling(config)
  h, w = int(shape[0]), int(shape[1])
  if h % factor == 0 and w % factor == 0:
    return
  m = config.model
  levels = (f"model.num_downsamples={m.num_downsamples} + "
            f"model.top_downsamples={m.top_downsamples}"
            if m.get("top_downsamples") else
            f"model.num_downsamples={m.num_downsamples}")
  size = max(factor, round(max(h, w) / factor) * factor)
  raise ConfigError(
      f"Images of {h}x{w} do not fit the model: its {levels} halvings need a "
      f"height and width divisible by {factor}; set --config.data.image_size="
      f"{size} (or another multiple of {factor}), or fewer downsamplings.")


def train_group(batch_size: int, learning_rate: float, num_steps: int = 2000,
                cosine_decay: bool = False, grad_clip_norm: float = 0.0
                ) -> ml_collections.ConfigDict:
  """The `train` group: global batch (over all devices), Adam(W) settings
  read by `vqjax.train.state.make_optimizer`, logging interval."""
  return ml_collections.ConfigDict(dict(
      batch_size=batch_size, num_steps=num_steps, learning_rate=learning_rate,
      weight_decay=0.0, warmup_steps=0, cosine_decay=cosine_decay,
      grad_clip_norm=grad_clip_norm, log_every=100,
      # Non-finite steps are skipped; this many in a row stop the run.
      max_bad_steps=20))


def vqvae_defaults() -> ml_collections.ConfigDict:
  """Stage 1: Sonnet's VQ-VAE (128 hiddens, 32 residual hiddens, 2 residual
  layers, K=512, D=64, beta=0.25, Adam 3e-4, EMA decay 0.99) on MNIST."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.progress_bar = True

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist"      # mnist | fashion_mnist | cifar10 | tfds:<name> | folder
  config.data.dir = ""            # "" -> $VQJAX_DATA_DIR/<name>, then a download cache
  config.data.image_size = 0      # folder / tfds: resize to this square size (0 = keep)
  config.data.read_threads = 4    # batches the Grain pipeline reads concurrently
  config.data.prefetch_batches = 8  # batches read ahead of the training step

  config.model = ml_collections.ConfigDict()
  config.model.bottleneck = "vq"    # vq | ae | vae (same encoder, decoder, latent grid)
  config.model.num_hiddens = 128
  config.model.num_residual_hiddens = 32
  config.model.num_residual_layers = 2
  config.model.num_downsamples = 2  # 28x28 -> 7x7 codes (VQ-VAE-2: the bottom grid)
  config.model.top_downsamples = 0  # > 0: VQ-VAE-2, a top grid 2^this coarser
  config.model.kernels = "auto"     # auto | xla | xla_cpu (vqjax.models.build); not architecture
  config.model.dtype = "float32"    # float32 | bfloat16 activations; params, quantizer in float32

  config.quantizer = ml_collections.ConfigDict()
  config.quantizer.kind = "vq"      # vq | fsq | lfq (docs/quantizers.md)
  config.quantizer.num_codes = 512  # K (lfq: 2^d; fsq: prod(levels) instead)
  config.quantizer.code_dim = 64    # D
  config.quantizer.beta = 0.25      # commitment cost
  config.quantizer.use_ema = True
  config.quantizer.decay = 0.99
  config.quantizer.epsilon = 1e-5
  config.quantizer.dead_code_threshold = 1.0  # EMA uses per step; 0 = no restarts
  config.quantizer.kmeans_init = False
  config.quantizer.kmeans_iters = 10
  config.quantizer.gradient = "straight_through"  # straight_through | rotation (trick)
  config.quantizer.cosine = False   # l2-normalised codes and inputs (ViT-VQGAN)
  config.quantizer.lookup_dim = 0   # > 0: look codes up in a projection to this dim
  config.quantizer.depth = 1        # residual VQ: codes per position (1 = plain)
  config.quantizer.shared_codebook = False  # residual VQ: one codebook for all depths
  config.quantizer.dropout = 0.0    # residual VQ: P(a train step uses 1..depth depths)
  config.quantizer.groups = 1       # grouped VQ: G codebooks for G slices of D
  config.quantizer.levels = (8, 5, 5, 5)  # fsq: levels per channel, K = prod; CLI '(8,6,5)'
  config.quantizer.entropy_weight = 0.1   # lfq: weight of the entropy penalty
  config.quantizer.entropy_temperature = 0.01  # lfq: of its soft assignments

  config.train = train_group(batch_size=128, learning_rate=3e-4)

  config.eval = ml_collections.ConfigDict()
  config.eval.every = 1000
  config.eval.batch_size = 500
  config.eval.num_images = 32       # images in each reconstruction grid

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 500
  config.checkpoint.max_to_keep = 3

  return config


def tiny_vqvae(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a stage-1 config to seconds of training (the `tiny` variants
  the tests run): 16 hiddens, K=32, D=8, batch 16, 6 steps, Flax's own
  layers (`model.kernels=xla`: at this size the XLA:CPU kernels' longer
  compilation costs more than they save)."""
  config.model.num_hiddens = 16
  config.model.num_residual_hiddens = 8
  config.model.num_residual_layers = 1
  config.quantizer.num_codes = 32
  config.quantizer.code_dim = 8
  config.model.kernels = "xla"
  config.train.batch_size = 16
  config.train.num_steps = 6
  config.train.log_every = 2
  config.eval.every = 6
  config.eval.batch_size = 2000
  config.eval.num_images = 8
  config.checkpoint.every = 3
  config.progress_bar = False
  return config


def cifar10_vqvae_defaults() -> ml_collections.ConfigDict:
  """Stage 1 on CIFAR-10 with Sonnet's example settings (batch 32, 100k
  steps); the CIFAR-10 configs change the model from here."""
  config = vqvae_defaults()
  config.data.name = "cifar10"
  config.train.batch_size = 32
  config.train.num_steps = 100_000
  config.eval.every = 5000
  config.checkpoint.every = 5000
  return config


def tiny_prior(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a stage-2 config to seconds of training (the `tiny` variants),
  on Flax's own layers (as `tiny_vqvae`)."""
  config.model.features = 8
  config.model.kernels = "xla"
  config.model.num_layers = 2
  config.model.kernel_size = 3
  config.model.head_features = 8
  config.model.cond_features = 8
  config.train.batch_size = 16
  config.train.num_steps = 4
  config.train.log_every = 2
  config.eval.every = 4
  config.eval.batch_size = 2000
  config.eval.num_samples = 4
  config.checkpoint.every = 4
  config.progress_bar = False
  return config


def prior_defaults() -> ml_collections.ConfigDict:
  """Stage 2: a Gated PixelCNN prior over the codes of a stage-1 run.

  With `vqvae_workdir` empty the same PixelCNN models raw pixels instead
  (256 values per channel).
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.progress_bar = True
  config.vqvae_workdir = ""        # stage-1 run folder; "" = model raw pixels
  config.level = "codes"           # the code grid to model: codes (VQ-VAE) | top | bottom (VQ-VAE-2)

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist"
  config.data.dir = ""
  config.data.image_size = 0
  config.data.read_threads = 4
  config.data.prefetch_batches = 8

  config.model = ml_collections.ConfigDict()
  config.model.features = 64
  config.model.num_layers = 8     # gated layers after the first (mask A) one
  config.model.kernel_size = 5
  config.model.head_features = 128
  config.model.conditional = False  # class-conditional on the dataset labels
  config.model.num_clusters = 0     # C >= 2: conditional on k-means clusters of the training codes, no labels (vqjax.clusters)
  config.model.cond_features = 64   # bottom level: width of the top-code conditioning map
  config.model.attention_every = 0  # n > 0: causal self-attention after every n-th gated layer (codes only)
  config.model.attention_heads = 4
  config.model.dropout = 0.0        # dropout in the gated layers (and attention) at training time
  config.model.label_dropout = 0.0  # p > 0: each training example's class/cluster -> "none" w.p. p (classifier-free guidance)
  config.model.dtype = "float32"    # float32 | bfloat16 activations; logits and loss in float32
  config.model.kernels = "auto"     # auto | xla | xla_cpu (vqjax.models.build); not architecture

  config.train = train_group(batch_size=64, learning_rate=1e-3,
                             cosine_decay=True, grad_clip_norm=1.0)
  config.train.ema_decay = 0.0      # > 0: evaluate, sample and save a moving average of the parameters

  config.eval = ml_collections.ConfigDict()
  config.eval.every = 1000
  config.eval.batch_size = 500
  config.eval.num_samples = 16     # samples drawn for the picture at each eval

  config.sample = ml_collections.ConfigDict()
  config.sample.temperature = 1.0
  config.sample.guidance = 0.0     # w > 0 (needs model.label_dropout): logits c + w (c - u)
  config.sample.method = "cached"  # cached | plain

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 1000
  config.checkpoint.max_to_keep = 3
  return config
