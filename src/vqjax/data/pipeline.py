"""Grain pipelines over any source: seeded shuffle, global batches, this
process's rows, threads that read ahead, and a checkpointable iterator.

Training (`train_batches`): the example order is Grain's seeded shuffle of
`range(len(source))`, reshuffled every epoch and repeated forever; it is cut
into global batches of G examples, and process p of P reads only rows
`[p G/P, (p + 1) G/P)` of each. So the global batch of every step is the
same whatever the number of processes and devices, and no process reads
another's examples. The iterator's state (`get_state()` / `set_state()`,
JSON) is saved with every checkpoint, so a resumed run continues the exact
data order.

Evaluation (`eval_batches`): one in-order pass, padded to whole global
batches; the padding rows repeat example 0 and carry `mask` 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import grain
import numpy as np

from vqjax.data.base import DataError, Dataset

_VARIANCE_CHUNK_ELEMENTS = 1 << 22
# Lazily read sources estimate their variance from this many examples.
VARIANCE_SAMPLE = 10_000


def _process_layout(global_batch_size: int, process_index: int | None,
                    process_count: int | None) -> tuple[int, int]:
  """Returns (process index, per-process batch size), validating both."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(f"Invalid process_index {process_index} for process_count "
                    f"{process_count}.")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise DataError(
        f"Global batch size {global_batch_size} must be a positive multiple of "
        f"the process count {process_count}; change the batch size.")
  return process_index, global_batch_size // process_count


def _iterate(dataset: grain.MapDataset, read_threads: int,
             prefetch_batches: int) -> grain.DatasetIterator:
  options = grain.ReadOptions(num_threads=max(read_threads, 0),
                              prefetch_buffer_size=max(prefetch_batches, 0))
  return iter(dataset.to_iter_dataset(options))


def train_batches(source, global_batch_size: int, seed: int,
                  process_index: int | None = None,
                  process_count: int | None = None, read_threads: int = 4,
                  prefetch_batches: int = 8) -> grain.DatasetIterator:
  """This process's training batches, forever; see the module docstring.

  Args:
    source: any source (`vqjax.data.base`).
    global_batch_size: G, examples per step over all processes.
    seed: the shuffle seed (>= 0).
    process_index, process_count: default to JAX's.
    read_threads: batches read concurrently (Grain's threads).
    prefetch_batches: batches read ahead of the training step.

  Returns:
    A Grain iterator of `{'image': [G/P, H, W, C], 'label': [G/P] int32}`
    with `get_state()` / `set_state(state)`.

  Raises:
    DataError (a ValueError), immediately, if G is not a multiple of the
    process count or is larger than the dataset.
  """
  p, local = _process_layout(global_batch_size, process_index, process_count)
  if global_batch_size > len(source):
    raise DataError(
        f"Global batch size {global_batch_size} is larger than the "
        f"{len(source)} examples of {source.name!r}; use a smaller batch size.")
  if seed < 0:
    raise DataError(f"seed must be >= 0, got {seed}.")
  rows = slice(p * local, (p + 1) * local)
  dataset = (grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
             .batch(global_batch_size)
             .map(lambda indices: source.batch(indices[rows])))
  return _iterate(dataset, read_threads, prefetch_batches)


def num_eval_batches(source, global_batch_size: int) -> int:
  """Number of batches `eval_batches` yields (the last one may be padded)."""
  return -(-len(source) // global_batch_size)


def eval_batches(source, global_batch_size: int,
                 process_index: int | None = None,
                 process_count: int | None = None, read_threads: int = 4,
                 prefetch_batches: int = 8) -> Iterator[dict]:
  """One in-order pass over the whole split, padded to full batches.

  Global batch b covers examples [b * G, (b + 1) * G); rows past the end are
  copies of example 0 with mask 0. Process p keeps rows [p * G/P, (p + 1) * G/P).
  Every process yields the same number of batches.

  Yields:
    {'image': [G/P, H, W, C], 'label': [G/P] int32,
     'mask': [G/P] float32 (1 real example, 0 padding)}.
  """
  p, local = _process_layout(global_batch_size, process_index, process_count)
  n = len(source)

  def read(b: int) -> dict:
    positions = b * global_batch_size + p * local + np.arange(local)
    real = positions < n
    batch = source.batch(np.where(real, positions, 0))
    batch["mask"] = real.astype(np.float32)
    return batch

  dataset = grain.MapDataset.range(num_eval_batches(source, global_batch_size))
  return _iterate(dataset.map(read), read_threads, prefetch_batches)


def data_variance(source) -> float:
  """Variance of all pixel values scaled to [0, 1], computed in float64.

  Over every image of an in-memory `Dataset` (two passes over chunks, so no
  float copy of the dataset is made); a lazily read source is estimated
  from `VARIANCE_SAMPLE` examples drawn without replacement (seed 0). VQ-VAE
  divides its reconstruction MSE by this, as Sonnet's example does.
  """
  if len(source) == 0:
    raise DataError(f"Dataset {source.name!r} is empty; cannot compute its "
                    "variance.")
  if isinstance(source, Dataset):
    images = source.images
  else:
    count = min(len(source), VARIANCE_SAMPLE)
    picks = np.sort(np.random.default_rng(0).choice(len(source), count,
                                                    replace=False))
    images = source.batch(picks)["image"]
  flat = images.reshape(len(images), -1)
  rows = max(1, _VARIANCE_CHUNK_ELEMENTS // flat.shape[1])
  chunks = [slice(i, i + rows) for i in range(0, len(flat), rows)]
  total = sum(int(flat[c].sum(dtype=np.int64)) for c in chunks)
  mean = total / flat.size / 255.0
  squares = 0.0
  for c in chunks:
    deviation = flat[c].astype(np.float64) / 255.0 - mean
    squares += float(np.dot(deviation.ravel(), deviation.ravel()))
  return squares / flat.size
