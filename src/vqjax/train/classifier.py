"""The classifier behind `vqjax.evaluation`'s sample-quality metrics, trained
on a dataset's training split by the shared loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from vqjax import data
from vqjax.models.classifier import Classifier
from vqjax.models.vqvae import to_float
from vqjax.parallel import AXIS
from vqjax.train import loop
from vqjax.train.state import TrainState, make_optimizer


def build(config: ml_collections.ConfigDict, num_classes: int) -> Classifier:
  return Classifier(num_classes=num_classes, width=config.model.width,
                    feature_dim=config.model.feature_dim)


class ClassifierTask:
  """Cross-entropy on the labels; reports test accuracy."""
  progress_keys = ("loss", "accuracy")

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.train_data = data.load(config.data, "train")
    self.test_data = data.load(config.data, "test")
    if self.train_data.num_classes < 2:
      raise data.DataError(
          f"{config.data.name!r} has no class labels; the sample-quality "
          "metrics need a labelled dataset to train their classifier on.")
    self.model = build(config, self.train_data.num_classes)
    self.has_initialize = False

  def checkpoint_meta(self) -> dict:
    return {"kind": "classifier", "num_classes": self.train_data.num_classes,
            "image_shape": list(self.train_data.shape)}

  def check_resume(self, meta: dict) -> None:
    del meta

  def create_train_state(self, rng, batch) -> TrainState:
    params = jax.jit(self.model.init)(rng, to_float(jnp.asarray(batch["image"])))
    return TrainState.create(apply_fn=self.model.apply,
                             params=params["params"],
                             tx=make_optimizer(self.config))

  def _logits(self, params, batch):
    return self.model.apply({"params": params}, to_float(batch["image"]))

  def train_step(self, state: TrainState, batch: dict):
    def loss_fn(params):
      logits = self._logits(params, batch)
      loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["label"]))
      return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state = state.apply_gradients(grads=lax.pmean(grads, AXIS))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state, lax.pmean({"loss": loss, "accuracy": accuracy}, AXIS)

  def eval_step(self, state: TrainState, batch: dict) -> dict:
    logits = self._logits(state.params, batch)
    correct = (jnp.argmax(logits, -1) == batch["label"]) * batch["mask"]
    return lax.psum({"correct": jnp.sum(correct),
                     "count": jnp.sum(batch["mask"])}, AXIS)

  def summarize_eval(self, sums) -> dict[str, float]:
    return {"accuracy": float(sums["correct"] / sums["count"])}

  def write_images(self, state, batches, step, workdir) -> list[str]:
    del state, batches, step, workdir
    return []


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains a classifier in `workdir`; returns its test accuracy."""
  return loop.train_and_evaluate(lambda: ClassifierTask(config), config,
                                 workdir)


def default_config(data_config: ml_collections.ConfigDict
                   ) -> ml_collections.ConfigDict:
  """The classifier for a dataset: 3 epochs of MNIST-sized data."""
  from vqjax import configs  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.progress_bar = False
  config.data = ml_collections.ConfigDict(data_config.to_dict())
  config.model = ml_collections.ConfigDict({"width": 32, "feature_dim": 128})
  config.train = configs.train_group(batch_size=128, learning_rate=1e-3,
                                     num_steps=1500, cosine_decay=True)
  config.train.log_every = 500
  config.eval = ml_collections.ConfigDict({"every": 1500, "batch_size": 1000})
  config.checkpoint = ml_collections.ConfigDict({"every": 1500,
                                                 "max_to_keep": 1})
  return config
