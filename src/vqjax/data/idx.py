"""MNIST and Fashion-MNIST from their canonical gzipped IDX files."""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from vqjax.data import files as files_lib
from vqjax.data.base import DataError, Dataset


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SOURCES = {
    "mnist": ("https://storage.googleapis.com/cvdf-datasets/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
}
_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 2051, 2049
_MNIST_SIZE, _MNIST_CLASSES = 28, 10


def _read_gzip(path: str) -> bytes:
  """Returns the decompressed bytes of a gzip file, or raises DataError."""
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (EOFError, OSError, zlib.error) as e:
    raise DataError(
        f"{path}: corrupt or truncated gzip file ({e}); delete it and "
        "re-download it.") from e


def _parse_idx(raw: bytes, path: str, magic: int, ndim: int) -> np.ndarray:
  """Parses a decompressed IDX file of uint8 values with `ndim` dimensions.

  Returns:
    A read-only uint8 array of the shape given in the header.
  """
  header_len = 4 * (1 + ndim)
  if len(raw) < header_len:
    raise DataError(f"{path}: expected an IDX header of {header_len} bytes, "
                    f"found a {len(raw)}-byte file.")
  header = np.frombuffer(raw, ">u4", count=1 + ndim)
  if int(header[0]) != magic:
    raise DataError(f"{path}: expected IDX magic {magic}, found "
                    f"{int(header[0])}; is this the right file?")
  shape = tuple(int(d) for d in header[1:])
  expected = int(np.prod(shape))
  if len(raw) - header_len != expected:
    raise DataError(
        f"{path}: header says shape {shape} ({expected} bytes of data), found "
        f"{len(raw) - header_len} bytes; the file is truncated or corrupt.")
  return np.frombuffer(raw, np.uint8, offset=header_len).reshape(shape)


def _read_idx_images(path: str) -> np.ndarray:
  """Returns the images of an IDX3 .gz file as [N, 28, 28, 1] uint8."""
  images = _parse_idx(_read_gzip(path), path, _IDX_IMAGES_MAGIC, ndim=3)
  if images.shape[1:] != (_MNIST_SIZE, _MNIST_SIZE):
    raise DataError(f"{path}: expected {_MNIST_SIZE}x{_MNIST_SIZE} images, "
                    f"found {images.shape[1]}x{images.shape[2]}.")
  return images[..., None]


def _read_idx_labels(path: str) -> np.ndarray:
  """Returns the labels of an IDX1 .gz file as [N] int32 in 0..9."""
  labels = _parse_idx(_read_gzip(path), path, _IDX_LABELS_MAGIC, ndim=1)
  if labels.size and labels.max() >= _MNIST_CLASSES:
    raise DataError(f"{path}: expected labels in 0..{_MNIST_CLASSES - 1}, "
                    f"found {int(labels.max())}.")
  return labels.astype(np.int32)


def load(name: str, split: str, data_dir: str | None) -> Dataset:
  """Loads MNIST or Fashion-MNIST from gzipped IDX files."""
  base_url, md5s = SOURCES[name]
  files = _IDX_FILES[split]

  def fetch(target):
    for f in files:
      if not os.path.isfile(os.path.join(target, f)):
        files_lib.download(base_url + f, os.path.join(target, f), md5s[f])

  folder = files_lib.locate(name, split, files, data_dir, fetch)
  image_path, label_path = (os.path.join(folder, f) for f in files)
  images = _read_idx_images(image_path)
  labels = _read_idx_labels(label_path)
  if len(images) != len(labels):
    raise DataError(f"{label_path}: expected {len(images)} labels (one per "
                    f"image in {image_path}), found {len(labels)}.")
  return Dataset(name, images, labels, _MNIST_CLASSES)
