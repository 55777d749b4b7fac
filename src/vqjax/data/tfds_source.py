"""Any TFDS dataset with an `image` feature, read lazily through
`tfds.data_source` (random access to the prepared files, no TensorFlow)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vqjax.data import files
from vqjax.data.base import DataError, LazySource, resize_array


def _num_classes(source, builder: str) -> int:
  """num_classes of the 'label' feature, or 0 if there is none."""
  info = getattr(source, "dataset_info", None)
  if info is None:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    info = tfds.builder(builder).info
  features = info.features
  if "label" not in features:
    return 0
  return int(getattr(features["label"], "num_classes", 0) or 0)


def _image(record, name: str, index: int, image_size: int) -> np.ndarray:
  """The 'image' of one TFDS record as [H, W, C] uint8, resized if asked."""
  if "image" not in record:
    raise DataError(f"{name}: records have no 'image' feature (keys: "
                    f"{sorted(record)}); only image datasets are supported.")
  image = np.asarray(record["image"])
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.dtype != np.uint8:
    raise DataError(f"{name}: record {index} image must be [H, W, C] uint8, "
                    f"got {image.shape} {image.dtype}.")
  return resize_array(image, image_size) if image_size else image


class TfdsSource(LazySource):
  """One split of a TFDS dataset; `source[i]` reads and decodes record i."""

  def __init__(self, builder: str, source, image_size: int):
    self.name = f"tfds:{builder}"
    self._source = source
    self._image_size = image_size
    self.num_classes = _num_classes(source, builder)
    self.shape = _image(source[0], self.name, 0, image_size).shape

  def __len__(self) -> int:
    return len(self._source)

  def _example(self, record, index: int) -> dict:
    image = _image(record, self.name, index, self._image_size)
    if image.shape != self.shape:
      raise DataError(
          f"{self.name}: record {index} has shape {image.shape} but record 0 "
          f"has {self.shape}; set data.image_size to resize them all.")
    label = int(record["label"]) if self.num_classes else 0
    return {"image": image, "label": np.int32(label)}

  def __getitem__(self, index: int) -> dict:
    return self._example(self._source[int(index)], int(index))

  def batch(self, indices: Sequence[int] | np.ndarray) -> dict:
    indices = [int(i) for i in indices]
    try:  # One batched read where the source has it.
      records = list(self._source.__getitems__(indices))
    except (AttributeError, TypeError):  # e.g. sources mocked by tfds.testing
      records = [self._source[i] for i in indices]
    examples = [self._example(r, i) for r, i in zip(records, indices)]
    return {"image": np.stack([e["image"] for e in examples]),
            "label": np.asarray([e["label"] for e in examples], np.int32)}


def load(builder: str, split: str, data_dir: str | None,
         image_size: int) -> TfdsSource:
  """Opens a TFDS split for random access via `tfds.data_source`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name = f"tfds:{builder}"
  try:
    source = tfds.data_source(builder, split=split, data_dir=data_dir,
                              download=not files.downloads_disabled())
  except Exception as e:  # TFDS raises many types; report them all the same way.
    raise DataError(
        f"{name}: could not open split {split!r} ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}); check the builder name "
        "and split, and set data.dir or TFDS_DATA_DIR to where it is "
        "prepared.") from e
  if len(source) == 0:
    raise DataError(f"{name}: split {split!r} is empty.")
  return TfdsSource(builder, source, image_size)
