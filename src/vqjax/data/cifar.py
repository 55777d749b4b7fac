"""CIFAR-10 from its "python version" pickled batches."""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile

import numpy as np

from vqjax.data import files as files_lib
from vqjax.data.base import DataError, Dataset


_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR_SUBFOLDER = "cifar-10-batches-py"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_SIZE, _CIFAR_CLASSES = 32, 10


def _fetch_cifar10(target: str):
  """Downloads the CIFAR-10 tarball and extracts its batches into `target`.

  Extracts into a temporary folder first and renames it into place, so an
  interrupted run never leaves a partial `cifar-10-batches-py/` behind.
  """
  os.makedirs(target, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=target, prefix=".cifar10.")
  try:
    tarball = os.path.join(tmp, os.path.basename(_CIFAR_URL))
    files_lib.download(_CIFAR_URL, tarball, _CIFAR_MD5)
    with tarfile.open(tarball, "r:gz") as tar:
      tar.extractall(tmp, filter="data")
    os.replace(os.path.join(tmp, _CIFAR_SUBFOLDER),
               os.path.join(target, _CIFAR_SUBFOLDER))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _read_pickle(path: str) -> dict:
  try:
    with open(path, "rb") as f:
      content = pickle.load(f, encoding="bytes")
  except Exception as e:  # pylint: disable=broad-except
    # Corrupt bytes make the unpickler raise almost anything (UnpicklingError,
    # EOFError, OverflowError, MemoryError, KeyError, UnicodeDecodeError, ...).
    raise DataError(f"{path}: not a readable CIFAR-10 python pickle ({e}); "
                    "delete it and re-download it.") from e
  if not isinstance(content, dict):
    raise DataError(f"{path}: expected a pickled dict, found "
                    f"{type(content).__name__}.")
  return content


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images [n, 32, 32, 3] uint8, labels [n] int32) of one batch."""
  batch = _read_pickle(path)
  missing = [k for k in (b"data", b"labels") if k not in batch]
  if missing:
    raise DataError(f"{path}: expected keys b'data' and b'labels', missing "
                    f"{missing}; found {sorted(batch)}.")
  data = np.asarray(batch[b"data"])
  pixels = 3 * _CIFAR_SIZE * _CIFAR_SIZE
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
    raise DataError(f"{path}: expected b'data' of shape [n, {pixels}] uint8, "
                    f"found {data.shape} {data.dtype}.")
  labels = np.asarray(batch[b"labels"])
  if labels.shape != (len(data),) or (
      labels.size and (labels.min() < 0 or labels.max() >= _CIFAR_CLASSES)):
    raise DataError(f"{path}: expected {len(data)} labels in "
                    f"0..{_CIFAR_CLASSES - 1}, found shape {labels.shape} "
                    f"with values {np.unique(labels)[:12].tolist()}.")
  images = data.reshape(-1, 3, _CIFAR_SIZE, _CIFAR_SIZE).transpose(0, 2, 3, 1)
  return images, labels.astype(np.int32)


def _cifar_num_classes(folder: str) -> int:
  """Number of label names in batches.meta, or 10 if there is no meta file."""
  path = os.path.join(folder, "batches.meta")
  if not os.path.isfile(path):
    return _CIFAR_CLASSES
  names = _read_pickle(path).get(b"label_names")
  if not isinstance(names, list) or len(names) != _CIFAR_CLASSES:
    raise DataError(f"{path}: expected b'label_names' with {_CIFAR_CLASSES} "
                    f"names, found {names!r:.100}.")
  return len(names)


def load(split: str, data_dir: str | None) -> Dataset:
  """Loads CIFAR-10 from the python-version pickled batches."""
  files = _CIFAR_FILES[split]
  folder = files_lib.locate("cifar10", split, files, data_dir, _fetch_cifar10,
                   subfolders=(_CIFAR_SUBFOLDER,))
  batches = [_read_cifar_batch(os.path.join(folder, f)) for f in files]
  images = np.concatenate([b[0] for b in batches])  # Also makes it contiguous.
  labels = np.concatenate([b[1] for b in batches])
  return Dataset("cifar10", images, labels, _cifar_num_classes(folder))
