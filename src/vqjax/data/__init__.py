"""Image datasets as random-access sources, fed to training by Grain.

Sources (`config.data.name`), one module each:

  * `mnist`, `fashion_mnist` (`idx`): the canonical gzipped IDX files.
  * `cifar10` (`cifar`): the "python version" pickled batches.
  * `tfds:<builder>` (`tfds_source`): any TFDS builder with an `image` feature,
    read lazily through `tfds.data_source` (no TensorFlow needed).
  * `folder` (`folder`): a folder of PNG/JPEG files, decoded lazily.

MNIST, Fashion-MNIST and CIFAR-10 are small and held in memory as a
`Dataset`; the others are read example by example. `files` finds (and, once,
downloads) the files; `pipeline` builds the Grain pipelines: a seeded,
checkpointable training order sharded over processes, and exact evaluation
passes.
"""

from __future__ import annotations

import os

from vqjax.data import cifar, folder, idx, tfds_source
from vqjax.data.base import SPLITS, DataError, Dataset, check_split, resized
from vqjax.data.pipeline import (data_variance, eval_batches,
                                 num_eval_batches, train_batches)

NAMES = ("mnist", "fashion_mnist", "cifar10", "tfds:<builder>", "folder")


def load(config, split: str):
  """Opens `split` ('train' | 'test') of the dataset described by `config`.

  Args:
    config: the `data` group of a run config (an `ml_collections.ConfigDict`
      or any mapping) with `name`, and optionally `dir` and `image_size`.
    split: 'train' or 'test'.
  """
  return load_dataset(
      name=config.get("name"),
      split=split,
      data_dir=config.get("dir", "") or None,
      image_size=int(config.get("image_size", 0) or 0))


# (H, W, C) of the datasets whose image size is fixed.
KNOWN_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1),
                "cifar10": (32, 32, 3)}


def known_image_shape(config) -> tuple[int, int] | None:
  """(H, W) of the images `config` (a `data` group) will load, if that is
  known without reading the dataset: `image_size`, a fixed-size dataset, or
  the first image of a folder (whose images are all one size unless
  `image_size` is set). None when it is not known cheaply (TFDS) or the
  data cannot be found: loading it then says why."""
  size = int(config.get("image_size", 0) or 0)
  if size > 0:
    return size, size
  name = config.get("name") or ""
  if name in KNOWN_SHAPES:
    return KNOWN_SHAPES[name][:2]
  if name == "folder" and config.get("dir"):
    return folder.first_image_size(os.path.expanduser(config.get("dir")))
  return None


def load_dataset(name: str, split: str, data_dir: str | None = None,
                 image_size: int = 0):
  """Opens one split of a dataset by name; see the module docstring.

  Args:
    name: 'mnist' | 'fashion_mnist' | 'cifar10' | 'tfds:<builder>' | 'folder'.
    split: 'train' or 'test' (tfds accepts any TFDS split string).
    data_dir: folder holding the files; None or '' to use the default lookup.
    image_size: if > 0, images are center-cropped to square and resized to
      [image_size, image_size]; 0 keeps the stored size.

  Returns:
    A source: `len(source)`, `source[i]`, `source.batch(indices)`, `shape`,
    `num_classes`, `name` (`vqjax.data.base`).
  """
  if not name:
    raise DataError("No dataset name given; set data.name to one of "
                    f"{', '.join(repr(n) for n in NAMES)}.")
  if image_size < 0:
    raise DataError(f"image_size must be >= 0, got {image_size}.")
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  if name == "tfds:":
    raise DataError("Dataset 'tfds:' names no builder; use e.g. 'tfds:mnist'.")
  if name.startswith("tfds:"):
    return tfds_source.load(name[len("tfds:"):], split, data_dir, image_size)
  check_split(name, split)
  if name in idx.SOURCES:
    return resized(idx.load(name, split, data_dir), image_size)
  if name == "cifar10":
    return resized(cifar.load(split, data_dir), image_size)
  if name == "folder":
    return folder.load(data_dir, split, image_size)
  raise DataError(
      f"Unknown dataset {name!r}; use 'mnist', 'fashion_mnist', 'cifar10', "
      "'tfds:<builder>' or 'folder'.")


__all__ = ["SPLITS", "DataError", "Dataset", "load", "load_dataset",
           "known_image_shape",
           "train_batches", "eval_batches", "num_eval_batches",
           "data_variance"]
