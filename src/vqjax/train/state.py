"""The train state shared by every vqjax trainer."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state


class TrainState(train_state.TrainState):
  """Flax's TrainState plus `model_state`: the model's non-param collections
  (e.g. the EMA codebook in `vq_ema`), updated by the step, not by gradients."""
  model_state: Any = struct.field(default_factory=dict)

  def variables(self) -> dict:
    """`{"params": ..., **model_state}` for `module.apply`."""
    return {"params": self.params, **self.model_state}


class Stage1TrainState(TrainState):
  """A stage-1 run's state: also the decoder likelihood's per-channel
  variance `[C]` (`vqjax.likelihood`), which the trainer keeps as an
  exponential moving average of the batches' squared errors. It scores the
  model, it is not part of it."""
  decoder_variance: Any = None


class PriorTrainState(TrainState):
  """A prior's state: also `ema_params`, an exponential moving average of the
  parameters (Polyak averaging, as PixelCNN++ trains), updated by every step
  (`update_ema`) and used for evaluation, sampling and the saved run; None
  when `train.ema_decay` is 0."""
  ema_params: Any = None

  def update_ema(self, decay: float) -> "PriorTrainState":
    """`ema = d * ema + (1 - d) * params` with `d = min(decay, (1 + n) /
    (10 + n))` after n steps, so the average forgets the initialisation
    early on (TensorFlow's `ExponentialMovingAverage(num_updates)`). Call
    after `apply_gradients`: `step` is then n."""
    step = jnp.asarray(self.step, jnp.float32)
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p,
                                 self.ema_params, self.params)
    return self.replace(ema_params=ema)

  def eval_params(self):
    """The parameters to evaluate and sample with: the average if kept."""
    return self.params if self.ema_params is None else self.ema_params


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam(W) with optional warm-up/cosine schedule and gradient clipping.

  Reads `config.train`: learning_rate, weight_decay, warmup_steps,
  cosine_decay (bool), num_steps, grad_clip_norm (0 = off).
  """
  train = config.train
  lr: Any = train.learning_rate
  if train.cosine_decay or train.warmup_steps:
    lr = optax.warmup_cosine_decay_schedule(
        0.0, train.learning_rate, max(train.warmup_steps, 1), train.num_steps,
        end_value=0.0 if train.cosine_decay else train.learning_rate)
  chain = []
  if train.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(train.grad_clip_norm))
  if train.weight_decay:
    chain.append(optax.adamw(lr, weight_decay=train.weight_decay))
  else:
    chain.append(optax.adam(lr))
  return optax.chain(*chain)


def jit_init(init: Callable[..., Any], *args) -> Any:
  """`jax.jit(init)(*args)`: a module's `init` and its inputs -> variables.

  On XLA:CPU the initializers are compiled without LLVM's optimisation passes
  (`xla_backend_optimization_level=0`): LLVM spends most of a run's start-up
  optimising the unrolled threefry of the random initializers (seconds, for
  code that runs once in microseconds), and the values it computes differ
  from the optimised build's by at most an ulp (fused multiply-adds in the
  truncated normal). Other backends compile as usual.
  """
  lowered = jax.jit(init).lower(*args)
  if jax.default_backend() == "cpu":
    return lowered.compile({"xla_backend_optimization_level": 0})(*args)
  return lowered.compile()(*args)
