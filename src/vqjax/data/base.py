"""What every data source is: random access to `{"image", "label"}` records.

A source has a `name`, a `shape` `(H, W, C)`, `num_classes` (0 without
labels), `len(source)` examples, `source[i]` -> `{"image": [H, W, C] uint8,
"label": int32}` and `source.batch(indices)` -> `{"image": [n, H, W, C],
"label": [n] int32}`. `vqjax.data.pipeline` turns any of them into Grain
pipelines; nothing needs a split in memory except the small datasets that
arrive as arrays (`Dataset`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "test")


class DataError(ValueError):
  """A dataset is missing, corrupt, or asked for in an unsupported way."""


def check_split(name: str, split: str) -> None:
  if split not in SPLITS:
    raise DataError(f"Dataset {name!r} has splits {SPLITS}, got {split!r}.")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
  """One split held in host memory as arrays (MNIST, CIFAR-10, VQ-VAE codes).

  Attributes:
    name: the source name, e.g. 'mnist'.
    images: [N, H, W, C] uint8 pixels (or int16/int32 codes: a stage-2 prior
      trains on VQ-VAE codes through the same pipeline).
    labels: [N] int32; all zeros when the source has no labels.
    num_classes: number of label classes; 0 when the source has no labels.
    conditions: optional `[N, ...]` per-example conditioning, batched as
      'cond' (a VQ-VAE-2's top codes, for the bottom codes' prior).
  """
  name: str
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  conditions: np.ndarray | None = None

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype not in (np.uint8, np.int16,
                                                          np.int32):
      raise DataError(
          f"Dataset {self.name!r}: images must be [N, H, W, C] uint8 (or int "
          f"codes), got {self.images.shape} {self.images.dtype}.")
    if self.labels.shape != self.images.shape[:1] or self.labels.dtype != np.int32:
      raise DataError(
          f"Dataset {self.name!r}: labels must be [{self.images.shape[0]}] "
          f"int32, got {self.labels.shape} {self.labels.dtype}.")

  def __repr__(self) -> str:
    return (f"Dataset(name={self.name!r}, images={self.images.shape} "
            f"{self.images.dtype}, labels={self.labels.shape} "
            f"{self.labels.dtype}, num_classes={self.num_classes})")

  @property
  def shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one image."""
    _, h, w, c = self.images.shape
    return int(h), int(w), int(c)

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def __getitem__(self, index: int) -> dict:
    return {k: v[0] for k, v in self.batch(np.asarray([index])).items()}

  def batch(self, indices: Sequence[int] | np.ndarray) -> dict:
    """Gathers rows: {'image': [n, H, W, C], 'label': [n] int32} (and
    'cond': [n, ...] when the dataset has conditions)."""
    indices = np.asarray(indices, np.int64)
    rows = {"image": self.images[indices], "label": self.labels[indices]}
    if self.conditions is not None:
      rows["cond"] = self.conditions[indices]
    return rows


class LazySource:
  """A source that decodes each example when it is asked for (an image
  folder, a TFDS data source): subclasses give `__len__`, `__getitem__`,
  `name`, `shape` and `num_classes`."""

  def batch(self, indices: Sequence[int] | np.ndarray) -> dict:
    records = [self[int(i)] for i in indices]
    h, w, c = self.shape
    images = np.empty((len(records), h, w, c), np.uint8)
    for k, record in enumerate(records):
      images[k] = record["image"]
    return {"image": images,
            "label": np.asarray([r["label"] for r in records], np.int32)}


# ----------------------------------------------------------------------------
# Resizing (folder, tfds, and optionally the array datasets).


def resize_image(image, size: int):
  """Center-crops a PIL image to square and resizes it to [size, size]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  w, h = image.size
  side = min(w, h)
  if w != h:
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
  if side != size:
    image = image.resize((size, size), Image.Resampling.BICUBIC)
  return image


def resize_array(image: np.ndarray, size: int) -> np.ndarray:
  """[H, W, C] uint8 -> [size, size, C] uint8 (center crop, then resize)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(resize_image(pil, size))
  return out.reshape(size, size, channels)


def resized(dataset: Dataset, image_size: int) -> Dataset:
  """Returns `dataset` with images resized to image_size (0: unchanged)."""
  h, w, c = dataset.shape
  if not image_size or (h, w) == (image_size, image_size):
    return dataset
  images = np.empty((len(dataset), image_size, image_size, c), np.uint8)
  for i, image in enumerate(dataset.images):
    images[i] = resize_array(image, image_size)
  return dataclasses.replace(dataset, images=images)
