"""A folder of PNG/JPEG images, read lazily: one file decoded per example asked for.

The folder is searched recursively. With `train/` and `test/` subfolders those
are the splits; otherwise every 10th file (in sorted order) is the test split.
If every image sits in one of >= 2 class subfolders (`[train/]<class>/x.png`),
sorted class names give the labels. Opening a split reads only the file
headers (colour mode and size); pixels are decoded when the pipeline asks.
"""

from __future__ import annotations

import os

import numpy as np

from vqjax.data.base import (SPLITS, DataError, LazySource, check_split,
                             resize_image)

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_GREYSCALE_MODES = ("1", "L", "LA")


def _list_images(folder: str) -> list[str]:
  """Paths (relative to `folder`, '/'-separated) of all images, sorted."""
  paths = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for f in files:
      if f.lower().endswith(_IMAGE_EXTENSIONS):
        rel = os.path.relpath(os.path.join(root, f), folder)
        paths.append(rel.replace(os.sep, "/"))
  return sorted(paths)


def first_image_size(folder: str) -> tuple[int, int] | None:
  """(H, W) of the first image (in sorted order) under `folder`, read from
  its header; None if there is none or it cannot be read."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for f in sorted(files):
      if f.lower().endswith(_IMAGE_EXTENSIONS):
        try:
          with Image.open(os.path.join(root, f)) as image:
            w, h = image.size
          return h, w
        except Exception:  # pylint: disable=broad-except
          return None  # loading the folder reports it, with its name
  return None


def _folder_split_files(root: str, split: str) -> tuple[bool, list[str], list[str]]:
  """Returns (has split subfolders, this split's image paths, all image paths).

  Paths are relative to `root`. With `train/` and `test/` subfolders each split
  is its own folder; otherwise every 10th image (in sorted order, starting at
  the first) is the test split and the rest is the train split.
  """
  if all(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
    everything = [f"{s}/{p}" for s in SPLITS
                  for p in _list_images(os.path.join(root, s))]
    mine = [p for p in everything if p.startswith(f"{split}/")]
    return True, mine, everything
  everything = _list_images(root)
  mine = [p for i, p in enumerate(everything) if (i % 10 == 0) == (split == "test")]
  return False, mine, everything


def _folder_class(path: str, has_splits: bool) -> str | None:
  """The class subfolder of a relative image path, or None if it has none."""
  parts = path.split("/")[1 if has_splits else 0:]
  return parts[0] if len(parts) > 1 else None


def _open_image(path: str):
  """Opens an image lazily (header only), or raises DataError naming it."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    return Image.open(path)
  except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
    raise DataError(f"{path}: not a readable image ({e}); remove or replace "
                    "it.") from e


def _decode_image(path: str, mode: str, image_size: int) -> np.ndarray:
  """Decodes one image file to [H, W, C] uint8 in `mode` ('L' or 'RGB')."""
  try:
    with _open_image(path) as image:
      image = image.convert(mode)
      if image_size:
        image = resize_image(image, image_size)
      array = np.asarray(image, np.uint8)
  except DataError:
    raise
  except (OSError, SyntaxError, ValueError) as e:
    raise DataError(f"{path}: not a readable image ({e}); remove or replace "
                    "it.") from e
  return array[..., None] if array.ndim == 2 else array


class FolderSource(LazySource):
  """One split of an image folder; `source[i]` decodes file i."""

  def __init__(self, root: str, files: list[str], labels: np.ndarray,
               num_classes: int, mode: str, size: tuple[int, int],
               image_size: int):
    self.name = "folder"
    self.root = root
    self.files = files
    self.labels = labels
    self.num_classes = num_classes
    self._mode = mode
    self._image_size = image_size
    w, h = size
    self.shape = (h, w, 1 if mode == "L" else 3)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict:
    path = os.path.join(self.root, self.files[index])
    image = _decode_image(path, self._mode, self._image_size)
    if image.shape != self.shape:
      raise DataError(f"{path} decodes to {image.shape[1]}x{image.shape[0]}, "
                      f"not {self.shape[1]}x{self.shape[0]} like the others; "
                      "set data.image_size to resize them all.")
    return {"image": image, "label": self.labels[index]}

  def __repr__(self) -> str:
    return (f"FolderSource({self.root!r}, {len(self)} images of "
            f"{self.shape}, num_classes={self.num_classes})")


def load(root: str | None, split: str, image_size: int) -> FolderSource:
  """Opens a split of a folder of PNG/JPEG images; see the module docstring."""
  if not root:
    raise DataError("Dataset 'folder' needs a folder: set data.dir to a folder "
                    "of PNG/JPEG images.")
  if not os.path.isdir(root):
    raise DataError(f"Image folder {root} does not exist; set data.dir to a "
                    "folder of PNG/JPEG images.")
  check_split("folder", split)
  has_splits, files, everything = _folder_split_files(root, split)
  if not files:
    raise DataError(f"No {'/'.join(_IMAGE_EXTENSIONS)} images for split "
                    f"{split!r} under {root}; add images or check data.dir.")
  classes = [_folder_class(p, has_splits) for p in everything]
  # Labelled iff every image sits in a subfolder and there are >= 2 of them
  # (a single subfolder, e.g. celeba/img_align_celeba/, is just a container).
  class_names = sorted(set(classes)) if None not in classes else []
  class_names = class_names if len(class_names) > 1 else []
  class_index = {c: i for i, c in enumerate(class_names)}
  labels = np.asarray([class_index[_folder_class(f, has_splits)]
                       if class_names else 0 for f in files], np.int32)

  # Headers only: the colour mode and (if not resizing) the size.
  modes, sizes = set(), {}
  for f in files:
    with _open_image(os.path.join(root, f)) as image:
      modes.add(image.mode)
      sizes.setdefault(image.size, f)
  mode = "L" if modes <= set(_GREYSCALE_MODES) else "RGB"
  if not image_size and len(sizes) > 1:
    examples = ", ".join(f"{f} is {w}x{h}" for (w, h), f in list(sizes.items())[:2])
    raise DataError(f"Images under {root} have different sizes ({examples}); "
                    "set data.image_size to resize them to one size.")
  size = (image_size, image_size) if image_size else next(iter(sizes))
  return FolderSource(root, files, labels, len(class_names), mode, size,
                      image_size)
