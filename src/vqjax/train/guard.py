"""What keeps a long run's saved work good: non-finite updates skipped inside
the step, and a preemption signal turned into a save.

* `skip_nonfinite_updates` wraps a pure train step so that a step whose loss
  or new state (parameters, optimizer state, EMA codebook, decoder variance:
  every float leaf) is not finite on any device leaves the whole state as it
  was, decided inside the jitted step and identically on every device (as
  t5x's `skip_nan_updates` and `optax.apply_if_finite` do for the optimizer;
  vqjax's EMA codebook lives outside the optimizer, so the guard covers the
  whole state).
* `Preemption` turns SIGTERM / SIGINT into a flag the training loop polls once
  a step: the loop finishes the step in flight, saves, waits for the save and
  raises `Preempted`. A second signal exits at once. With several processes
  (`jax.distributed`), JAX's preemption sync point makes every process stop at
  the same step (JAX's own SIGTERM notifier; see
  `jax.experimental.multihost_utils.reached_preemption_sync_point`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
from absl import logging
from jax import lax

from vqjax.parallel import AXIS

SKIPPED = "skipped_steps"  # 1.0 in a skipped step's metrics, else 0.0


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. every update is non-finite); what was saved
  before is intact."""


class Preempted(Exception):
  """The run was asked to stop by a signal and saved a checkpoint first."""

  def __init__(self, signum: int, step: int, directory: str):
    self.signum, self.step, self.directory = signum, step, directory
    super().__init__(
        f"Stopped by {signal.Signals(signum).name} after step {step}; its "
        f"checkpoint is complete in {directory}. Run the same command to "
        "resume.")

  @property
  def exit_status(self) -> int:
    """128 + the signal's number, the shells' convention (143: SIGTERM)."""
    return 128 + self.signum


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def skip_nonfinite_updates(train_step: Callable) -> Callable:
  """`train_step(state, batch) -> (state, metrics)` (one device's, with
  collectives over `AXIS`), made to keep `state` whole when the step's
  `metrics["loss"]` or any float leaf of the new state is not finite on any
  device. The step's metrics gain `skipped_steps` (1.0 or 0.0); a skipped
  step does not advance `state.step`, so the next batch is trained on as if
  the bad one had not been there.
  """

  def step(state, batch):
    new_state, metrics = train_step(state, batch)
    finite = _all_finite(new_state)
    if "loss" in metrics:
      finite = finite & jnp.all(jnp.isfinite(metrics["loss"]))
    finite = lax.pmin(finite.astype(jnp.int32), AXIS) > 0
    state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old),
                                   new_state, state)
    return state, dict(metrics, **{SKIPPED: 1.0 - finite.astype(jnp.float32)})

  return step


def check_finite(state, step: int, directory: str) -> None:
  """Raises `TrainingError` rather than let a non-finite state be saved (a
  run resumed from a bad checkpoint)."""
  if not bool(_all_finite(state)):
    raise TrainingError(
        f"The train state at step {step} is not finite, so it was not saved "
        f"(the checkpoints in {directory} are as they were); resume from an "
        "earlier checkpoint or start a new --workdir.")


class Preemption:
  """SIGTERM / SIGINT as a flag, polled with `requested(step)` once a step.

  A context manager: installs its handlers on entry (main thread only) and
  restores the previous ones on exit. With several processes it installs
  none and asks JAX's preemption sync point instead, which every process
  reaches at the same step after a SIGTERM to any of them.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}
    self._multiprocess = jax.process_count() > 1

  def __enter__(self) -> "Preemption":
    if (not self._multiprocess and
        threading.current_thread() is threading.main_thread()):
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum is not None:  # A second signal: no more waiting.
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.signum = signum
    logging.warning("%s received: finishing this step, saving a checkpoint, "
                    "then stopping (send it again to stop at once).",
                    signal.Signals(signum).name)

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step` (the same answer on every
    process)."""
    if self._multiprocess:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = signal.SIGTERM
        return True
      return False
    return self.signum is not None
