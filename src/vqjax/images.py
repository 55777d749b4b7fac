"""Image grids written as PNG: the one grid writer used by every script."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


# Small images are enlarged (nearest neighbour) to at least this many pixels
# a side, so that a 28x28 digit is readable in an image viewer.
VIEWABLE_SIZE = 84


def viewable_scale(height: int, width: int) -> int:
  """The integer upscaling `make_grid` applies by default: 3 for 28x28."""
  return max(1, VIEWABLE_SIZE // max(height, width, 1))


def make_grid(images: np.ndarray, num_cols: int | None = None,
              padding: int = 2, pad_value: int = 255,
              scale: int | None = None) -> np.ndarray:
  """Tiles `[N, H, W, C]` uint8 images into one `[rows*(sH+p)+p,
  cols*(sW+p)+p, C]` image, each enlarged `s` times by nearest neighbour
  (`scale`, default `viewable_scale(H, W)`). `num_cols` defaults to a
  near-square layout."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f"make_grid expects [N, H, W, C] images, got shape {images.shape}.")
  scale = scale or viewable_scale(*images.shape[1:3])
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, c = images.shape
  num_cols = num_cols or max(1, math.ceil(math.sqrt(n)))
  num_rows = max(1, math.ceil(n / num_cols))
  grid = np.full((num_rows * (h + padding) + padding,
                  num_cols * (w + padding) + padding, c), pad_value, np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, num_cols)
    top, left = padding + r * (h + padding), padding + col * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8,
                 pad_value: int = 255) -> np.ndarray:
  """Puts two grid images `[H, W, C]` next to each other (heights may differ)."""
  h = max(left.shape[0], right.shape[0])
  c = left.shape[2]
  out = np.full((h, left.shape[1] + gap + right.shape[1], c), pad_value, np.uint8)
  out[:left.shape[0], :left.shape[1]] = left
  out[:right.shape[0], left.shape[1] + gap:] = right
  return out


def save_image(path: str, image: np.ndarray) -> str:
  """Writes one `[H, W, C]` uint8 image (C = 1 or 3) as PNG; returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  Image.fromarray(image).save(path)
  return path


def save_grid(path: str, images: np.ndarray, num_cols: int | None = None) -> str:
  """Writes `[N, H, W, C]` uint8 images as one PNG grid."""
  return save_image(path, make_grid(images, num_cols))


def save_reconstructions(path: str, originals: np.ndarray,
                         reconstructions: np.ndarray,
                         num_cols: int | None = None) -> str:
  """Originals (left grid) next to their reconstructions (right grid), as in
  the VQ-VAE paper's figures. Both `[N, H, W, C]` uint8."""
  return save_image(path, side_by_side(make_grid(originals, num_cols),
                                       make_grid(reconstructions, num_cols)))
