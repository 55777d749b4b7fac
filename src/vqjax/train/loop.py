"""The training loop shared by every trainer (stage 1, stage 2, the classifier).

A `Task` says what to train (state, pure steps, data, pictures); this loop does
the rest the same way for every model: the Grain input pipeline, `pmap`,
logging, periodic evaluation, Orbax checkpoints (with the pipeline's iterator
state) and exact resumption.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Protocol

from absl import logging
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from vqjax import checkpoint, data, parallel
from vqjax.metric_writer import MetricWriter
from vqjax.train import guard
from vqjax.train.state import TrainState

# The input pipeline's iterator state, in every checkpoint's metadata.
DATA_STATE = "data_iterator"
# The layout of the saved train state; checkpoints before vqjax 0.2 have none.
FORMAT_KEY, FORMAT = "format", 2


class Task(Protocol):
  """What the loop needs from one kind of model.

  `train_step`, `eval_step` and `initialize` are pure single-device functions
  that use collectives over `parallel.AXIS`; the loop maps them over devices.
  """
  config: ml_collections.ConfigDict
  progress_keys: tuple[str, ...]  # metrics shown on the progress bar
  train_data: data.Dataset
  test_data: data.Dataset

  def create_train_state(self, rng: jax.Array, batch: dict) -> TrainState: ...

  def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]: ...

  def eval_step(self, state: TrainState, batch: dict) -> dict:
    """Returns sums over the (global) batch, to be added up over the split."""

  def summarize_eval(self, sums: dict[str, np.ndarray]) -> dict[str, float]: ...

  has_initialize: bool  # whether to call `initialize` on a fresh run

  def initialize(self, state: TrainState, batch: dict) -> TrainState:
    """Data-dependent initialisation from the first batch of a fresh run."""

  def checkpoint_meta(self) -> dict:
    """Extra JSON metadata saved with every checkpoint."""

  def check_resume(self, meta: dict) -> None:
    """Raises if the run saved with `meta` cannot be resumed by this task."""

  def write_images(self, state: TrainState, batches: dict[str, dict],
                   step: int, workdir: str) -> list[str]: ...


STEPS_AHEAD = 2  # Train steps dispatched before the host waits for the oldest.


class _BadSteps:
  """Counts the steps `guard.skip_nonfinite_updates` skipped, logs each with
  its number and stops the run after `limit` in a row."""

  def __init__(self, limit: int, directory: str):
    self.limit, self.directory = limit, directory
    self.in_a_row, self.last_seen = 0, 0

  def observe(self, step: int, metrics) -> None:
    """`metrics`: the step's (replicated) metrics, once computed."""
    if step <= self.last_seen:
      return
    self.last_seen = step
    if float(parallel.unreplicate(metrics[guard.SKIPPED])) == 0.0:
      self.in_a_row = 0
      return
    self.in_a_row += 1
    logging.warning("Step %d: the loss or the update was not finite; the step "
                    "was skipped (%d in a row).", step, self.in_a_row)
    if self.in_a_row >= self.limit:
      raise guard.TrainingError(
          f"Stopped at step {step}: {self.in_a_row} steps in a row (from step "
          f"{step - self.in_a_row + 1}) had a non-finite loss or update and "
          f"were skipped; the checkpoints in {self.directory} hold only finite "
          "states. Lower --config.train.learning_rate or check the data, then "
          "run again to resume from the last checkpoint.")


def _sum_trees(trees: list[dict]) -> dict:
  return jax.tree_util.tree_map(lambda *xs: np.sum(np.stack(xs), axis=0), *trees)


def evaluate(task: Task, p_eval_step, state, batch_size: int) -> dict[str, float]:
  """Runs `eval_step` over the whole test split and summarises it.

  Exact for any `batch_size` and device count: the batch is rounded up to a
  multiple of the devices, and the padding (there and in the last batch) is
  masked out of the sums, so every test example counts exactly once.
  """
  sums = []
  for batch in data.eval_batches(task.test_data,
                                 parallel.round_up_to_devices(batch_size),
                                 **read_options(task.config)):
    sums.append(jax.device_get(parallel.unreplicate(
        p_eval_step(state, parallel.shard(batch)))))
  return task.summarize_eval(_sum_trees(sums))


def read_options(config: ml_collections.ConfigDict) -> dict[str, int]:
  """How the input pipeline reads ahead (`config.data`)."""
  return {"read_threads": config.data.read_threads,
          "prefetch_batches": config.data.prefetch_batches}


def open_run(task: Task, workdir: str
             ) -> tuple[checkpoint.Checkpointer, int, dict]:
  """The run's Checkpointer, the step to start from (0 for a new run) and
  the latest checkpoint's metadata ({} for a new run).

  A run that exists must be resumable by `task` with its config (same
  architecture; `task.check_resume`), checked before any data is touched.
  """
  config = task.config
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint.max_to_keep)
  step = ckpt.latest_step()
  if step is None:
    return ckpt, 0, {}
  saved = checkpoint.read_config(workdir).to_dict()
  checkpoint.check_same_architecture(
      saved, config.to_dict(), workdir,
      groups=tuple(g for g in ("data", "model", "quantizer") if g in config))
  meta, _ = ckpt.restore_meta(step)
  if meta.get(FORMAT_KEY) != FORMAT:
    raise checkpoint.CheckpointError(
        f"{workdir!r} holds a run saved by vqjax < 0.2, whose train state "
        "has another layout (stage 1's decoder variance in model_state, a "
        "prior's parameters not under 'pixelcnn'); it restores for "
        "sample.py, evaluate.py and stage 2, but training cannot resume it: "
        "use a new --workdir.")
  task.check_resume(meta)
  return ckpt, int(step), meta


def train_and_evaluate(make_task: Callable[[], Task],
                       config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains `make_task()` in `workdir` to `config.train.num_steps`, resuming
  if it can. The global batch is checked against the devices before the task
  loads anything.

  Returns the last evaluation's metrics.
  """
  is_main = jax.process_index() == 0
  parallel.check_divisible(config.train.batch_size)
  task = make_task()

  ckpt, start_step, meta = open_run(task, workdir)
  options = read_options(config)
  # One-off reads (the example batch, the fixed picture batches): no threads.
  example = next(data.train_batches(task.train_data, config.train.batch_size,
                                    config.seed, read_threads=0,
                                    prefetch_batches=0))
  state = task.create_train_state(jax.random.PRNGKey(config.seed),
                                  {k: v[:1] for k, v in example.items()})
  if start_step:
    state, _, _ = ckpt.restore(state, start_step)
    logging.info("Resuming from %s at step %d.", ckpt.directory, start_step)
  if is_main and start_step == 0:
    checkpoint.write_config(workdir, config)

  writer = MetricWriter(workdir, enabled=is_main)
  p_train_step = parallel.data_parallel(
      guard.skip_nonfinite_updates(task.train_step))
  p_eval_step = parallel.data_parallel(task.eval_step, donate_state=False)
  state = parallel.replicate(state)

  batches = data.train_batches(task.train_data, config.train.batch_size,
                               config.seed, **options)
  if start_step:
    batches.set_state(meta[DATA_STATE])  # The exact data order goes on.
  elif task.has_initialize:
    state = parallel.data_parallel(task.initialize)(state,
                                                    parallel.shard(example))

  num_steps = config.train.num_steps
  eval_every = config.eval.every
  ckpt_every = config.checkpoint.every
  fixed = {"train": example,
           "test": next(data.eval_batches(task.test_data,
                                          config.train.batch_size,
                                          read_threads=0, prefetch_batches=0))}
  eval_metrics: dict[str, float] = {}
  pending, window_start, window_steps = [], time.perf_counter(), 0
  bad_steps = _BadSteps(config.train.max_bad_steps, ckpt.directory)
  saved = start_step

  def save(step):
    nonlocal saved
    host_state = parallel.unreplicate(state)
    guard.check_finite(host_state, step, ckpt.directory)
    ckpt.save(step, host_state,
              {"config": checkpoint.config_to_dict(config), FORMAT_KEY: FORMAT,
               DATA_STATE: batches.get_state(), **task.checkpoint_meta()})
    saved = step

  # A bar only where a person watches a terminal: a cluster job's log file
  # would get a line per step. The metric lines come every log_every steps
  # either way.
  show_bar = is_main and config.progress_bar and sys.stderr.isatty()
  progress = tqdm(range(start_step, num_steps), initial=start_step,
                  total=num_steps, disable=not show_bar, desc=os.path.basename(
                      os.path.normpath(workdir)), dynamic_ncols=True)
  try:
    with guard.Preemption() as preemption:
      for step in progress:
        done = step + 1
        state, metrics = p_train_step(state, parallel.shard(next(batches)))
        pending.append((done, metrics))
        if len(pending) > STEPS_AHEAD:
          # Dispatch no further ahead of the devices: with unboundedly many
          # steps queued, XLA:CPU's launch threads wait on a full device queue
          # whose computations need those threads (a deadlock under load).
          older_step, older = pending[-1 - STEPS_AHEAD]
          jax.block_until_ready(older)
          bad_steps.observe(older_step, older)
        window_steps += 1
        if done % config.train.log_every == 0 or done == num_steps:
          host = []
          for pending_step, m in pending:
            bad_steps.observe(pending_step, m)
            host.append(parallel.unreplicate(m))
          good = [m for m in host if m[guard.SKIPPED] == 0.0] or host
          averaged = {k: float(np.mean([m[k] for m in good])) for k in good[0]}
          averaged[guard.SKIPPED] = float(sum(m[guard.SKIPPED] for m in host))
          elapsed = time.perf_counter() - window_start
          averaged["images_per_sec"] = (window_steps * config.train.batch_size
                                        / max(elapsed, 1e-9))
          writer.write(done, averaged, "train")
          progress.set_postfix({k: f"{averaged[k]:.4g}" for k in
                                task.progress_keys if k in averaged})
          pending, window_start, window_steps = [], time.perf_counter(), 0
        if done % eval_every == 0 or done == num_steps:
          eval_metrics = evaluate(task, p_eval_step, state,
                                  config.eval.batch_size)
          writer.write(done, eval_metrics, "test")
          if is_main:
            host_state = parallel.unreplicate(state)
            for path in task.write_images(host_state, fixed, done, workdir):
              logging.info("Wrote %s", path)
          window_start = time.perf_counter()
        if done % ckpt_every == 0 or done == num_steps:
          for pending_step, m in pending:
            bad_steps.observe(pending_step, m)
          if bad_steps.in_a_row and done < num_steps:
            # The state is that of the last good step: no copy of it pushes
            # an older checkpoint out of the rotation.
            logging.warning("Step %d: no checkpoint during skipped steps.",
                            done)
          else:
            save(done)
          window_start = time.perf_counter()
        if done < num_steps and preemption.requested(done):
          for pending_step, m in pending:
            bad_steps.observe(pending_step, m)
          if saved != done:
            save(done)
          ckpt.wait()
          raise guard.Preempted(preemption.signum, done, ckpt.directory)
  finally:
    progress.close()
    ckpt.close()
    writer.close()
  if start_step >= num_steps:
    logging.info("%s is already trained to step %d (num_steps=%d); nothing to do.",
                 workdir, start_step, num_steps)
  return eval_metrics
