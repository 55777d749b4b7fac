"""Image datasets as host numpy arrays, and deterministic batch iterators.

Every source is loaded fully into memory as a `Dataset`: images `[N, H, W, C]`
uint8 and labels `[N]` int32. Sources (`name`):

  * `mnist`, `fashion_mnist`: the canonical gzipped IDX files.
  * `cifar10`: the "python version" pickled batches.
  * `tfds:<builder>`: any TFDS builder with an `image` feature, read through
    `tfds.data_source` (no TensorFlow needed).
  * `folder`: a folder of PNG/JPEG files, searched recursively. With `train/`
    and `test/` subfolders those are the splits; otherwise every 10th file (in
    sorted order) is the test split. If every image sits in one of >= 2 class
    subfolders (`[train/]<class>/x.png`), sorted class names give the labels.

Files for `mnist`, `fashion_mnist` and `cifar10` are looked up in `data_dir`
(or `config.dir`) if given, else in `$VQJAX_DATA_DIR/<name>/`, else in the
download cache `$VQJAX_CACHE_DIR/<name>/` (default `~/.cache/vqjax/<name>/`).
If they are missing, they are downloaded once (MD5-checked) unless
`VQJAX_NO_DOWNLOAD=1`.

Batches: `train_batches` is an infinite, resumable iterator whose order is a
pure function of `(seed, epoch)`; `eval_batches` makes one padded, masked pass.
Both shard every global batch across processes by rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

SPLITS = ("train", "test")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_GREYSCALE_MODES = ("1", "L", "LA")
_DOWNLOAD_TIMEOUT_S = 60
_VARIANCE_CHUNK_ELEMENTS = 1 << 22


class DataError(ValueError):
  """A dataset is missing, corrupt, or asked for in an unsupported way."""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
  """One split of an image dataset, held in host memory.

  Attributes:
    name: the source name, e.g. 'mnist' or 'tfds:celeb_a'.
    images: [N, H, W, C] uint8 pixels (or int16/int32 codes: a stage-2 prior
      trains on VQ-VAE codes through the same batching).
    labels: [N] int32; all zeros when the source has no labels.
    num_classes: number of label classes; 0 when the source has no labels.
  """
  name: str
  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype not in (np.uint8, np.int16,
                                                          np.int32):
      raise DataError(
          f"Dataset {self.name!r}: images must be [N, H, W, C] uint8 (or int "
          f"codes), got "
          f"{self.images.shape} {self.images.dtype}.")
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

  @property
  def num_examples(self) -> int:
    return int(self.images.shape[0])

  def __len__(self) -> int:
    return self.num_examples


# ----------------------------------------------------------------------------
# Entry points.


def load(config, split: str) -> Dataset:
  """Loads `split` ('train' | 'test') of the dataset described by `config`.

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


def load_dataset(name: str, split: str, data_dir: str | None = None,
                 image_size: int = 0) -> Dataset:
  """Loads one split of a dataset by name; see the module docstring.

  Args:
    name: 'mnist' | 'fashion_mnist' | 'cifar10' | 'tfds:<builder>' | 'folder'.
    split: 'train' or 'test' (tfds accepts any TFDS split string).
    data_dir: folder holding the files; None or '' to use the default lookup.
    image_size: if > 0, images are center-cropped to square and resized to
      [image_size, image_size]; 0 keeps the stored size.

  Returns:
    A `Dataset` with images [N, H, W, C] uint8 and labels [N] int32.
  """
  if not name:
    raise DataError("No dataset name given; set data.name to one of "
                    "'mnist', 'fashion_mnist', 'cifar10', 'tfds:<builder>', 'folder'.")
  if image_size < 0:
    raise DataError(f"image_size must be >= 0, got {image_size}.")
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  if name == "tfds:":
    raise DataError("Dataset 'tfds:' names no builder; use e.g. 'tfds:mnist'.")
  if name.startswith("tfds:"):
    return _load_tfds(name[len("tfds:"):], split, data_dir, image_size)
  _check_split(name, split)
  if name in _IDX_SOURCES:
    dataset = _load_idx_dataset(name, split, data_dir)
  elif name == "cifar10":
    dataset = _load_cifar10(split, data_dir)
  elif name == "folder":
    return _load_folder(data_dir, split, image_size)
  else:
    raise DataError(
        f"Unknown dataset {name!r}; use 'mnist', 'fashion_mnist', 'cifar10', "
        "'tfds:<builder>' or 'folder'.")
  return _resized_dataset(dataset, image_size)


def _check_split(name: str, split: str):
  if split not in SPLITS:
    raise DataError(f"Dataset {name!r} has splits {SPLITS}, got {split!r}.")


# ----------------------------------------------------------------------------
# Finding and downloading files.


def _downloads_disabled() -> bool:
  return os.environ.get("VQJAX_NO_DOWNLOAD", "").lower() in ("1", "true", "yes")


def _cache_dir(name: str) -> str:
  root = os.environ.get("VQJAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "vqjax")
  return os.path.join(root, name)


def _candidate_dirs(name: str, data_dir: str | None,
                    subfolders: Sequence[str] = ()) -> tuple[list[str], str]:
  """Returns (folders to search in order, folder to download into)."""
  if data_dir:
    roots, target = [data_dir, os.path.join(data_dir, name)], data_dir
  else:
    roots = []
    if os.environ.get("VQJAX_DATA_DIR"):
      roots.append(os.path.join(
          os.path.expanduser(os.environ["VQJAX_DATA_DIR"]), name))
    target = _cache_dir(name)
    roots.append(target)
  dirs = []
  for root in roots:
    dirs.append(root)
    dirs.extend(os.path.join(root, sub) for sub in subfolders)
  return dirs, target


def _find_files(dirs: Sequence[str], files: Sequence[str]) -> str | None:
  """Returns the first folder in `dirs` that holds all of `files`."""
  for folder in dirs:
    if all(os.path.isfile(os.path.join(folder, f)) for f in files):
      return folder
  return None


def _md5(path: str) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _download(url: str, path: str, md5: str):
  """Downloads `url` to `path` atomically (temp file + rename), checking MD5.

  Raises OSError (or a subclass) on network errors and MD5 mismatches; never
  leaves a partial file behind. Tests patch this function to go offline.
  """
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                             suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
        url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
      shutil.copyfileobj(response, out, 1 << 20)
    found = _md5(tmp)
    if found != md5:
      raise OSError(f"MD5 mismatch for {url}: expected {md5}, got {found}")
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def _missing_files_error(name: str, split: str, files: Sequence[str],
                         dirs: Sequence[str], target: str,
                         reason: str) -> DataError:
  return DataError(
      f"{name} {split}: missing {', '.join(files)} (looked in "
      f"{', '.join(dirs)}; {reason}). Set VQJAX_DATA_DIR or data.dir, or put "
      f"the files in {target}.")


def _locate(name: str, split: str, files: Sequence[str], data_dir: str | None,
            fetch, subfolders: Sequence[str] = ()) -> str:
  """Returns a folder holding all `files`, calling `fetch(target)` if needed.

  `fetch(target)` downloads the files into `target` (raising OSError on
  failure); it runs at most once, and not at all if VQJAX_NO_DOWNLOAD=1.
  """
  dirs, target = _candidate_dirs(name, data_dir, subfolders)
  folder = _find_files(dirs, files)
  if folder is not None:
    return folder
  if _downloads_disabled():
    raise _missing_files_error(name, split, files, dirs, target,
                               "downloads disabled by VQJAX_NO_DOWNLOAD")
  try:
    os.makedirs(target, exist_ok=True)
    fetch(target)
  except Exception as e:  # Network, HTTP, MD5 or archive errors alike.
    raise _missing_files_error(name, split, files, dirs, target,
                               f"download failed: {e}") from e
  folder = _find_files(dirs, files)
  if folder is None:
    raise _missing_files_error(name, split, files, dirs, target,
                               "the download did not provide them")
  return folder


# ----------------------------------------------------------------------------
# MNIST and Fashion-MNIST (IDX).

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_SOURCES = {
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


def _load_idx_dataset(name: str, split: str, data_dir: str | None) -> Dataset:
  """Loads MNIST or Fashion-MNIST from gzipped IDX files."""
  base_url, md5s = _IDX_SOURCES[name]
  files = _IDX_FILES[split]

  def fetch(target):
    for f in files:
      if not os.path.isfile(os.path.join(target, f)):
        _download(base_url + f, os.path.join(target, f), md5s[f])

  folder = _locate(name, split, files, data_dir, fetch)
  image_path, label_path = (os.path.join(folder, f) for f in files)
  images = _read_idx_images(image_path)
  labels = _read_idx_labels(label_path)
  if len(images) != len(labels):
    raise DataError(f"{label_path}: expected {len(images)} labels (one per "
                    f"image in {image_path}), found {len(labels)}.")
  return Dataset(name, images, labels, _MNIST_CLASSES)


# ----------------------------------------------------------------------------
# CIFAR-10 (python pickles).

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
    _download(_CIFAR_URL, tarball, _CIFAR_MD5)
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
  except (pickle.UnpicklingError, EOFError, OSError, ValueError,
          AttributeError, ImportError, IndexError, TypeError) as e:
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


def _load_cifar10(split: str, data_dir: str | None) -> Dataset:
  """Loads CIFAR-10 from the python-version pickled batches."""
  files = _CIFAR_FILES[split]
  folder = _locate("cifar10", split, files, data_dir, _fetch_cifar10,
                   subfolders=(_CIFAR_SUBFOLDER,))
  batches = [_read_cifar_batch(os.path.join(folder, f)) for f in files]
  images = np.concatenate([b[0] for b in batches])  # Also makes it contiguous.
  labels = np.concatenate([b[1] for b in batches])
  return Dataset("cifar10", images, labels, _cifar_num_classes(folder))


# ----------------------------------------------------------------------------
# Resizing (folder, tfds, and optionally the others).


def _resize_image(image, size: int):
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


def _resize_array(image: np.ndarray, size: int) -> np.ndarray:
  """[H, W, C] uint8 -> [size, size, C] uint8 (center crop, then resize)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(_resize_image(pil, size))
  return out.reshape(size, size, channels)


def _resized_dataset(dataset: Dataset, image_size: int) -> Dataset:
  """Returns `dataset` with images resized to image_size (0: unchanged)."""
  h, w, c = dataset.shape
  if not image_size or (h, w) == (image_size, image_size):
    return dataset
  images = np.empty((len(dataset), image_size, image_size, c), np.uint8)
  for i, image in enumerate(dataset.images):
    images[i] = _resize_array(image, image_size)
  return dataclasses.replace(dataset, images=images)


# ----------------------------------------------------------------------------
# TFDS.


def _read_records(source, start: int, stop: int) -> list:
  """Reads records [start, stop) of a TFDS data source, batched if possible."""
  try:
    return list(source.__getitems__(range(start, stop)))
  except (AttributeError, TypeError):  # e.g. sources mocked by tfds.testing.
    return [source[i] for i in range(start, stop)]


def _tfds_num_classes(source, builder: str) -> int:
  """num_classes of the 'label' feature, or 0 if there is none."""
  info = getattr(source, "dataset_info", None)
  if info is None:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    info = tfds.builder(builder).info
  features = info.features
  if "label" not in features:
    return 0
  return int(getattr(features["label"], "num_classes", 0) or 0)


def _load_tfds(builder: str, split: str, data_dir: str | None,
               image_size: int) -> Dataset:
  """Loads every record of a TFDS split into memory via `tfds.data_source`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  name = f"tfds:{builder}"
  try:
    source = tfds.data_source(builder, split=split, data_dir=data_dir,
                              download=not _downloads_disabled())
  except Exception as e:  # TFDS raises many types; report them all the same way.
    raise DataError(
        f"{name}: could not open split {split!r} ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}); check the builder name "
        "and split, and set data.dir or TFDS_DATA_DIR to where it is "
        "prepared.") from e
  n = len(source)
  if n == 0:
    raise DataError(f"{name}: split {split!r} is empty.")
  num_classes = _tfds_num_classes(source, builder)
  images, labels, chunk = None, np.zeros([n], np.int32), 1024
  with tqdm.tqdm(total=n, desc=f"Reading {name} {split}", unit="img",
                 disable=n < 10 * chunk) as progress:
    for start in range(0, n, chunk):
      for i, record in enumerate(_read_records(source, start, min(n, start + chunk)),
                                 start):
        image = _tfds_image(record, name, i, image_size)
        if images is None:
          images = np.empty((n,) + image.shape, np.uint8)
        elif image.shape != images.shape[1:]:
          raise DataError(
              f"{name}: record {i} has shape {image.shape} but record 0 has "
              f"{images.shape[1:]}; set data.image_size to resize them all.")
        images[i] = image
        if num_classes:
          labels[i] = int(record["label"])
      progress.update(min(n, start + chunk) - start)
  return Dataset(name, images, labels, num_classes)


def _tfds_image(record, name: str, index: int, image_size: int) -> np.ndarray:
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
  return _resize_array(image, image_size) if image_size else image


# ----------------------------------------------------------------------------
# Folder of images.


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
        image = _resize_image(image, image_size)
      array = np.asarray(image, np.uint8)
  except DataError:
    raise
  except (OSError, SyntaxError, ValueError) as e:
    raise DataError(f"{path}: not a readable image ({e}); remove or replace "
                    "it.") from e
  return array[..., None] if array.ndim == 2 else array


def _load_folder(root: str | None, split: str, image_size: int) -> Dataset:
  """Loads a split of a folder of PNG/JPEG images; see the module docstring."""
  if not root:
    raise DataError("Dataset 'folder' needs a folder: set data.dir to a folder "
                    "of PNG/JPEG images.")
  if not os.path.isdir(root):
    raise DataError(f"Image folder {root} does not exist; set data.dir to a "
                    "folder of PNG/JPEG images.")
  _check_split("folder", split)
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

  # Pass 1: headers only, for the colour mode and (if not resizing) the size.
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
  w, h = (image_size, image_size) if image_size else next(iter(sizes))

  # Pass 2: decode into one preallocated array.
  images = np.empty((len(files), h, w, 1 if mode == "L" else 3), np.uint8)
  labels = np.zeros([len(files)], np.int32)
  for i, f in enumerate(files):
    images[i] = _decode_image(os.path.join(root, f), mode, image_size)
    if class_names:
      labels[i] = class_index[_folder_class(f, has_splits)]
  return Dataset("folder", images, labels, len(class_names))


# ----------------------------------------------------------------------------
# Statistics.


def data_variance(dataset: Dataset) -> float:
  """Variance of all pixel values scaled to [0, 1], computed in float64.

  Two passes over chunks of the images (mean, then squared deviations), so no
  full float copy of the dataset is made. VQ-VAE divides its reconstruction
  MSE by this, as Sonnet's example does.
  """
  flat = dataset.images.reshape(len(dataset), -1)
  if flat.size == 0:
    raise DataError(f"Dataset {dataset.name!r} is empty; cannot compute its variance.")
  rows = max(1, _VARIANCE_CHUNK_ELEMENTS // flat.shape[1])
  chunks = [slice(i, i + rows) for i in range(0, len(flat), rows)]
  total = sum(int(flat[c].sum(dtype=np.int64)) for c in chunks)
  mean = total / flat.size / 255.0
  squares = 0.0
  for c in chunks:
    deviation = flat[c].astype(np.float64) / 255.0 - mean
    squares += float(np.dot(deviation.ravel(), deviation.ravel()))
  return squares / flat.size


# ----------------------------------------------------------------------------
# Batching.


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


def steps_per_epoch(dataset: Dataset, global_batch_size: int) -> int:
  """Number of full global batches in one epoch (the remainder is dropped)."""
  return len(dataset) // global_batch_size


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The example order of one training epoch: [num_examples] int64.

  A pure function of (seed, epoch), so any step can be recomputed on resume.
  """
  return np.random.default_rng((seed, epoch)).permutation(num_examples)


def _batch(dataset: Dataset, indices: np.ndarray) -> dict:
  """Gathers rows: {'image': [B, H, W, C] uint8, 'label': [B] int32}."""
  return {"image": dataset.images[indices], "label": dataset.labels[indices]}


def train_batches(dataset: Dataset, global_batch_size: int, seed: int,
                  start_step: int = 0, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[dict]:
  """Infinite iterator of this process's training batches from `start_step`.

  Step s takes epoch s // steps_per_epoch and the global batch
  `epoch_permutation(seed, epoch)[i * G:(i + 1) * G]`, i = s % steps_per_epoch,
  G = global_batch_size; process p of P keeps rows [p * G/P, (p + 1) * G/P).
  So resuming at step k yields exactly what an uninterrupted run yields.

  Yields:
    {'image': [G/P, H, W, C] uint8, 'label': [G/P] int32}.

  Raises:
    DataError (a ValueError), immediately, if G is not a multiple of the
    process count or is larger than the dataset.
  """
  p, local = _process_layout(global_batch_size, process_index, process_count)
  if global_batch_size > len(dataset):
    raise DataError(
        f"Global batch size {global_batch_size} is larger than the "
        f"{len(dataset)} examples of {dataset.name!r}; use a smaller batch size.")
  if start_step < 0 or seed < 0:
    raise DataError(f"seed and start_step must be >= 0, got {seed} and {start_step}.")
  per_epoch = steps_per_epoch(dataset, global_batch_size)

  def generate():
    epoch, order = -1, None
    step = start_step
    while True:
      e, i = divmod(step, per_epoch)
      if e != epoch:
        epoch, order = e, epoch_permutation(seed, e, len(dataset))
      start = i * global_batch_size + p * local
      yield _batch(dataset, order[start:start + local])
      step += 1

  return generate()


def num_eval_batches(dataset: Dataset, global_batch_size: int) -> int:
  """Number of batches `eval_batches` yields (the last one may be padded)."""
  return -(-len(dataset) // global_batch_size)


def eval_batches(dataset: Dataset, global_batch_size: int,
                 process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict]:
  """One in-order pass over the whole split, padded to full batches.

  Global batch b covers examples [b * G, (b + 1) * G); rows past the end are
  copies of example 0 with mask 0. Process p keeps rows [p * G/P, (p + 1) * G/P).
  Every process yields the same number of batches.

  Yields:
    {'image': [G/P, H, W, C] uint8, 'label': [G/P] int32,
     'mask': [G/P] float32 (1 real example, 0 padding)}.
  """
  p, local = _process_layout(global_batch_size, process_index, process_count)
  n = len(dataset)

  def generate():
    for b in range(num_eval_batches(dataset, global_batch_size)):
      positions = b * global_batch_size + p * local + np.arange(local)
      real = positions < n
      batch = _batch(dataset, np.where(real, positions, 0))
      batch["mask"] = real.astype(np.float32)
      yield batch

  return generate()
