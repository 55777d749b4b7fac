"""How good are a run's images, in numbers: `evaluate.py`'s module.

A small classifier (`vqjax.models.classifier`) is trained once per dataset on
its training split, by the shared training loop, and cached under
`$VQJAX_CACHE_DIR/classifiers/` (default `~/.cache/vqjax/classifiers/`).
For a set of images, its penultimate features give the Fréchet distance to
the test split (FID on this classifier) and its class probabilities the
Inception-score analogue and the predicted-class histogram
(`vqjax.metrics`). `evaluate_run` scores what a run makes: a VQ-VAE run's
test reconstructions; a prior run's samples, its VQ-VAE's decodings of
uniformly random codes and test reconstructions (for a VQ-VAE-2 also the
bottom prior's samples given the test images' top codes, which tells a bad
top prior from a bad bottom one); and, as the floor, real training images
against the test split.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqjax import checkpoint, data, generate, metrics, runs
from vqjax import metric_writer
from vqjax.models.classifier import Classifier
from vqjax.models.vqvae import to_float
from vqjax.train import classifier as classifier_lib

_BATCH = 500


def classifier_dir(data_config: ml_collections.ConfigDict) -> str:
  """Where the classifier of a dataset (name and image size) is cached."""
  root = os.environ.get("VQJAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "vqjax")
  name = data_config.name.replace(":", "_").replace("/", "_")
  size = data_config.get("image_size", 0) or "native"
  return os.path.join(root, "classifiers", f"{name}-{size}")


@dataclasses.dataclass(frozen=True)
class Scorer:
  """A trained classifier and the statistics of the test split's features."""
  model: Classifier
  variables: dict
  test_mean: np.ndarray
  test_cov: np.ndarray
  test_accuracy: float

  @functools.cached_property
  def _outputs(self):
    fn = jax.jit(lambda v, x: self.model.apply(v, to_float(x),
                                               return_features=True))
    return lambda x: fn(self.variables, x)

  def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 `[N, H, W, C]` -> (class probabilities `[N, K]`, features
    `[N, D]`)."""
    probs, features = [], []
    for start in range(0, len(images), _BATCH):
      logits, feats = self._outputs(jnp.asarray(images[start:start + _BATCH]))
      probs.append(np.asarray(jax.nn.softmax(logits)))
      features.append(np.asarray(feats))
    return np.concatenate(probs), np.concatenate(features)

  def score(self, images: np.ndarray) -> dict:
    """FID to the test split, Inception-score analogue, class histogram."""
    probs, features = self.outputs(images)
    mean, cov = metrics.feature_statistics(features)
    return {"fid": metrics.frechet_distance(mean, cov, self.test_mean,
                                            self.test_cov),
            "inception_score": metrics.inception_score(probs),
            "class_histogram": [round(float(f), 4) for f in
                                metrics.class_histogram(probs)],
            "num_images": int(len(images))}


def scorer_for(data_config: ml_collections.ConfigDict,
               num_steps: int | None = None) -> Scorer:
  """The cached classifier of a dataset (trained first if there is none)."""
  workdir = classifier_dir(data_config)
  config = classifier_lib.default_config(data_config)
  if num_steps is not None:
    config.train.num_steps = config.eval.every = num_steps
    config.checkpoint.every = num_steps
  ckpt = checkpoint.Checkpointer(workdir, create=True)
  trained = ckpt.latest_step()
  ckpt.close()
  if trained is None:
    print(f"Training the evaluation classifier for {data_config.name!r} "
          f"({config.train.num_steps} steps; cached in {workdir}) ...",
          flush=True)
    classifier_lib.train_and_evaluate(config, workdir)
  config, variables, meta, _ = runs.read_run(workdir)
  model = classifier_lib.build(config, meta["num_classes"])
  test = data.load(data_config, "test")
  scorer = Scorer(model, {"params": variables["params"]}, np.zeros(0),
                  np.zeros(0), 0.0)
  images, labels = _all(test)
  probs, features = scorer.outputs(images)
  mean, cov = metrics.feature_statistics(features)
  accuracy = float(np.mean(probs.argmax(axis=1) == labels))
  return dataclasses.replace(scorer, test_mean=mean, test_cov=cov,
                             test_accuracy=accuracy)


def _all(source) -> tuple[np.ndarray, np.ndarray]:
  batch = source.batch(np.arange(len(source)))
  return batch["image"], batch["label"]


def _subset(source, num: int, seed: int) -> np.ndarray:
  picks = np.sort(np.random.default_rng(seed).choice(
      len(source), min(num, len(source)), replace=False))
  return source.batch(picks)["image"]


def _in_chunks(fn, num: int, chunk: int = 500) -> np.ndarray:
  return np.concatenate([fn(start, min(chunk, num - start))
                         for start in range(0, num, chunk)])


def likelihood_bound(vqvae: runs.TrainedStage1,
                     priors: tuple[runs.TrainedPrior, ...] = ()) -> dict:
  """Bits per dimension of the test split, from the runs' logged test
  metrics: the decoder likelihood alone, plus the code cost under uniform
  codes (log2 K a code) and, given the priors of every level, under them.

  Returns `{}` if the stage-1 run logged no `reconstruction_bits_per_dim` at
  its checkpoint's step (runs from before vqjax logged it).
  """
  logged = metric_writer.read_test_metrics(vqvae.workdir, vqvae.step)
  if not logged or "reconstruction_bits_per_dim" not in logged:
    return {}
  bound = {"reconstruction only": logged["reconstruction_bits_per_dim"],
           "stage 1 (uniform codes, or the VAE's KL)": logged["bits_per_dim"]}
  if priors and len(priors) == len(vqvae.levels):
    dims = math.prod(vqvae.image_shape)
    nats = 0.0
    for prior in priors:
      prior_metrics = metric_writer.read_test_metrics(prior.workdir, prior.step)
      if not prior_metrics:
        return bound
      nats += prior_metrics["nll_nats"] * math.prod(prior.sample_shape)
    bound["with the PixelCNN prior" + ("s" if len(priors) > 1 else "")] = (
        logged["reconstruction_bits_per_dim"] + nats / (dims * math.log(2.0)))
  return bound


def evaluate_run(workdir: str, num: int = 3000, temperature: float = 1.0,
                 seed: int = 0, classifier_steps: int | None = None,
                 top_workdir: str | None = None, repeats: int = 1,
                 guidance: float = 0.0) -> dict:
  """Scores what the run in `workdir` makes; see the module docstring.

  A VQ-VAE-2's samples need both priors: `workdir` is the bottom-level prior
  and `top_workdir` the top-level one.

  FID from a few thousand images moves by about a point between sample sets
  of one model; `repeats` R > 1 draws every set R times (seeds `seed` ..
  `seed + R - 1`: new samples and new subsets of the real images) and reports
  the means, with FID's spread. `guidance` w > 0 samples the prior (a
  VQ-VAE-2's top prior) with classifier-free guidance.

  Returns:
    `{"classifier": {...}, "sets": {name: score}, "bits_per_dim": {...}}`;
    each score as `Scorer.score` gives it, averaged over the repeats, and with
    R > 1 also `fid_std` (sample standard deviation) and `fid_each`.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}.")
  kind = runs.run_kind(workdir)
  priors = ()
  if kind == "prior":
    prior = runs.restore_prior(workdir)
    data_config, vqvae = prior.config.data, prior.vqvae
    top = generate.top_prior_for(prior, top_workdir)
    priors = (prior,) if top is None else (top, prior)
  elif kind == "stage1":
    vqvae = runs.restore_stage1(workdir)
    data_config = vqvae.config.data
  else:
    raise checkpoint.CheckpointError(
        f"{workdir!r} is neither a stage-1 nor a prior run; pass the --workdir "
        "of a train_vqvae.py or train_prior.py run.")
  scorer = scorer_for(data_config, classifier_steps)
  test = data.load(data_config, "test")
  train = data.load(data_config, "train")

  samples = f"prior samples (T={temperature:g}" + (
      f", guidance {guidance:g})" if guidance else ")")

  def draw_sets(seed: int) -> dict[str, np.ndarray]:
    keys = jax.random.split(jax.random.PRNGKey(seed), -(-num // _BATCH) + 1)
    sets = {}
    if len(priors) == 2:
      sets[samples] = _in_chunks(
          lambda start, n: generate.hierarchical_samples(
              *priors, keys[start // _BATCH], n, temperature,
              guidance=guidance)[0], num)
    elif priors:
      sets[samples] = _in_chunks(
          lambda start, n: generate.prior_samples(
              prior, keys[start // _BATCH], n, temperature,
              guidance=guidance)[0], num)
    if priors and vqvae is not None:
      sets["random codes"] = _in_chunks(
          lambda start, n: generate.random_codes(
              prior, keys[-1 - start // _BATCH], n)[0], num)
    if kind == "stage1" and vqvae.config.model.bottleneck == "vae":
      sets["VAE samples (z ~ N(0, I))"] = _in_chunks(
          lambda start, n: vqvae.sample_latents(keys[start // _BATCH], n), num)
    if vqvae is not None:
      originals = _subset(test, num, seed)
      sets["test reconstructions"] = _in_chunks(
          lambda start, n: np.asarray(vqvae.reconstruct(
              originals[start:start + n])), len(originals))
    if len(priors) == 2:  # Which prior the samples' failures come from.

      def bottom_given_test_top(start, n):
        top_codes = np.asarray(vqvae.encode_levels(
            originals[start:start + n])["top"])
        bottom = generate.sample_bottom(prior, keys[start // _BATCH],
                                        top_codes, temperature)
        return np.asarray(vqvae.decode_levels({"top": top_codes,
                                               "bottom": bottom}))

      sets[f"bottom prior on test top codes (T={temperature:g})"] = _in_chunks(
          bottom_given_test_top, len(originals))
    sets["train images (floor)"] = _subset(train, num, seed)
    sets["test images"] = _subset(test, num, seed)
    return sets

  scores = [{name: scorer.score(images)
             for name, images in draw_sets(seed + r).items()}
            for r in range(repeats)]
  report = {"classifier": {"dataset": data_config.name,
                           "test_accuracy": scorer.test_accuracy,
                           "cache": classifier_dir(data_config)},
            "sets": {name: _mean_score([s[name] for s in scores])
                     for name in scores[0]}}
  if repeats > 1:
    report["repeats"] = {"count": repeats, "seeds": [seed, seed + repeats - 1]}
  if vqvae is not None:
    report["bits_per_dim"] = likelihood_bound(vqvae, priors)
  return report


def _mean_score(scores: list[dict]) -> dict:
  """One set's scores over repeats: means, and FID's spread if R > 1."""
  if len(scores) == 1:
    return scores[0]
  fids = [s["fid"] for s in scores]
  histogram = np.mean([s["class_histogram"] for s in scores], axis=0)
  return {"fid": float(np.mean(fids)),
          "fid_std": float(np.std(fids, ddof=1)),
          "fid_each": fids,
          "inception_score": float(np.mean([s["inception_score"]
                                            for s in scores])),
          "class_histogram": [round(float(f), 4) for f in histogram],
          "num_images": scores[0]["num_images"]}


def format_report(report: dict) -> str:
  """The numbers of `evaluate_run` as a small table."""
  c = report["classifier"]
  width = max([28] + [len(name) + 1 for name in report["sets"]])
  repeats = report.get("repeats")
  lines = [f"classifier on {c['dataset']}: test accuracy "
           f"{100 * c['test_accuracy']:.2f}% ({c['cache']})"]
  if repeats:
    lines.append(f"means over {repeats['count']} sample sets (seeds "
                 f"{repeats['seeds'][0]}-{repeats['seeds'][1]}); FID +- its "
                 "standard deviation")
  spread = 8 if repeats else 0
  lines.append(f"{'images':<{width}}{'FID':>10}{'':>{spread}}{'IS':>8}"
               "  predicted classes (%)")
  for name, score in report["sets"].items():
    histogram = " ".join(f"{100 * f:.0f}" for f in score["class_histogram"])
    std = f" +-{score['fid_std']:<5.2f}" if repeats else ""
    lines.append(f"{name:<{width}}{score['fid']:>10.3f}{std}"
                 f"{score['inception_score']:>8.3f}  {histogram}")
  bound = report.get("bits_per_dim")
  if bound:
    lines.append("test bits/dim (discretised-Gaussian decoder + code cost):")
    lines.extend(f"  {name:<44}{value:.4f}" for name, value in bound.items())
  return "\n".join(lines)
