"""Metrics to the console, `workdir/metrics.jsonl` and TensorBoard."""

from __future__ import annotations

import json
import os
import time

import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm


def format_metrics(metrics: dict[str, float]) -> str:
  return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


class MetricWriter:
  """Writes scalar metrics of a run; only process 0 writes files."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, float], split: str) -> None:
    """Logs `{name: value}` under `split/name` at `step`."""
    metrics = {k: float(v) for k, v in metrics.items()}
    if not self.enabled:
      return
    # tqdm.write keeps the progress bar intact.
    tqdm.write(f"[{split} step {step}] {format_metrics(metrics)}")
    record = {"step": step, "split": split, "time": time.time(), **metrics}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      if np.isfinite(value):
        self._tb.add_scalar(f"{split}/{name}", value, step)
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def read_test_metrics(workdir: str, step: int) -> dict[str, float] | None:
  """The test metrics a run logged at `step` (the last such record), or None."""
  path = os.path.join(workdir, "metrics.jsonl")
  found = None
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        if record.get("split") == "test" and record.get("step") == step:
          found = record
  return found
