"""Tests for vqjax.data: loaders (real MNIST files, fakes for the rest) and batching."""

import gzip
import hashlib
import json
import os
import pickle
import shutil
import struct
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vqjax import data
from vqjax.data import files, pipeline

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_IDX_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_REAL_DOWNLOAD = files.download  # Before the autouse fixture patches it.


# Read at collection, before other test files point it at the MNIST subset.
_DATA_DIR = os.environ.get("VQJAX_DATA_DIR")


def _data_root():
  """$VQJAX_DATA_DIR if set, else <repo>/../shared/data."""
  return _DATA_DIR or os.path.normpath(
      os.path.join(_REPO, "..", "shared", "data"))


def _real_dir(name):
  folder = os.path.join(_data_root(), name)
  if not os.path.isdir(folder):
    pytest.skip(f"No offline {name} files at {folder}: set VQJAX_DATA_DIR to a "
                f"folder holding {name}/.")
  return folder


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
  """No test may touch the network or the user's real download cache."""
  def no_download(url, path, md5):
    raise OSError(f"network disabled in tests ({url})")
  monkeypatch.setattr(files, "download", no_download)
  monkeypatch.setenv("VQJAX_CACHE_DIR", str(tmp_path / "cache"))


def _images(source):
  """Every image of a source (lazily read ones too): [N, H, W, C]."""
  return source.batch(np.arange(len(source)))["image"]


def _fake(n=10, h=4, w=3, c=2, num_classes=5, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
  labels = (np.arange(n) % num_classes).astype(np.int32)
  return data.Dataset("fake", images, labels, num_classes)


# ----------------------------------------------------------------------------
# MNIST / Fashion-MNIST from the real files.


@pytest.fixture(scope="module")
def mnist_dir():
  return _real_dir("mnist")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_idx_datasets(name):
  folder = _real_dir(name)
  train = data.load_dataset(name, "train", data_dir=folder)
  test = data.load(ml_collections.ConfigDict(
      {"name": name, "dir": folder, "image_size": 0}), "test")
  assert train.images.shape == (60000, 28, 28, 1)
  assert test.images.shape == (10000, 28, 28, 1)
  assert train.shape == test.shape == (28, 28, 1)
  for ds in (train, test):
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    assert ds.num_classes == 10 and ds.name == name
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    assert ds.images.max() == 255 and ds.images.min() == 0
  counts = np.bincount(test.labels, minlength=10).tolist()
  if name == "mnist":
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  else:
    assert counts == [1000] * 10


def test_lookup_via_env_and_parent_dir(mnist_dir, monkeypatch):
  monkeypatch.setenv("VQJAX_DATA_DIR", os.path.dirname(mnist_dir))
  assert len(data.load_dataset("mnist", "test")) == 10000
  # data_dir may also be the parent folder holding mnist/.
  monkeypatch.delenv("VQJAX_DATA_DIR")
  assert len(data.load_dataset("mnist", "test", os.path.dirname(mnist_dir))) == 10000


def _copy_test_files(src, dst):
  dst.mkdir(exist_ok=True)
  for f in _IDX_TEST_FILES:
    shutil.copy(os.path.join(src, f), dst / f)


@pytest.mark.parametrize("victim", _IDX_TEST_FILES)
def test_truncated_gzip(mnist_dir, tmp_path, victim):
  _copy_test_files(mnist_dir, tmp_path)
  raw = (tmp_path / victim).read_bytes()
  (tmp_path / victim).write_bytes(raw[:len(raw) // 2])
  with pytest.raises(data.DataError, match=victim) as e:
    data.load_dataset("mnist", "test", str(tmp_path))
  assert "truncated" in str(e.value) and "\n" not in str(e.value)


def test_bad_magic(mnist_dir, tmp_path):
  _copy_test_files(mnist_dir, tmp_path)
  # An images file that actually holds labels.
  shutil.copy(tmp_path / _IDX_TEST_FILES[1], tmp_path / _IDX_TEST_FILES[0])
  with pytest.raises(data.DataError, match=f"{_IDX_TEST_FILES[0]}.*magic 2051.*2049"):
    data.load_dataset("mnist", "test", str(tmp_path))


def _write_idx(path, magic, dims, payload):
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload)


def test_payload_and_count_mismatch(mnist_dir, tmp_path):
  _copy_test_files(mnist_dir, tmp_path)
  labels = tmp_path / _IDX_TEST_FILES[1]
  _write_idx(labels, 2049, [10], bytes(range(5)))  # Header says 10, holds 5.
  with pytest.raises(data.DataError, match=f"{_IDX_TEST_FILES[1]}.*truncated"):
    data.load_dataset("mnist", "test", str(tmp_path))
  _write_idx(labels, 2049, [5], bytes(range(5)))  # Valid, but 5 != 10000 images.
  with pytest.raises(data.DataError, match="expected 10000 labels.*found 5"):
    data.load_dataset("mnist", "test", str(tmp_path))
  _write_idx(labels, 2049, [2], bytes([3, 12]))
  with pytest.raises(data.DataError, match="labels in 0..9, found 12"):
    data.load_dataset("mnist", "test", str(tmp_path))
  _write_idx(tmp_path / _IDX_TEST_FILES[0], 2051, [1, 2, 3], bytes(6))
  with pytest.raises(data.DataError, match="expected 28x28 images, found 2x3"):
    data.load_dataset("mnist", "test", str(tmp_path))


def test_missing_files_download_failed(tmp_path, monkeypatch):
  monkeypatch.delenv("VQJAX_NO_DOWNLOAD", raising=False)  # CI sets it
  monkeypatch.delenv("VQJAX_DATA_DIR", raising=False)
  cache = os.path.join(str(tmp_path / "cache"), "fashion_mnist")
  with pytest.raises(data.DataError) as e:
    data.load_dataset("fashion_mnist", "train")
  message = str(e.value)
  assert "train-images-idx3-ubyte.gz" in message and "network disabled" in message
  assert f"put the files in {cache}" in message and "VQJAX_DATA_DIR" in message
  assert "\n" not in message
  assert not os.listdir(cache) if os.path.isdir(cache) else True


def test_missing_files_no_download_env(tmp_path, monkeypatch):
  monkeypatch.setenv("VQJAX_NO_DOWNLOAD", "1")
  calls = []
  monkeypatch.setattr(files, "download", lambda *args: calls.append(args))
  missing = tmp_path / "nowhere"
  with pytest.raises(data.DataError, match=f"put the files in {missing}") as e:
    data.load(ml_collections.ConfigDict({"name": "mnist", "dir": str(missing)}), "test")
  assert "VQJAX_NO_DOWNLOAD" in str(e.value) and not calls


def test_download_into_cache(mnist_dir, tmp_path, monkeypatch):
  """A (faked) successful download lands in the cache and is then used."""
  monkeypatch.delenv("VQJAX_NO_DOWNLOAD", raising=False)  # CI sets it
  monkeypatch.delenv("VQJAX_DATA_DIR", raising=False)
  urls = []
  def fake_download(url, path, md5):
    urls.append(url)
    shutil.copy(os.path.join(mnist_dir, os.path.basename(path)), path)
  monkeypatch.setattr(files, "download", fake_download)
  ds = data.load_dataset("mnist", "test")
  assert len(ds) == 10000 and len(urls) == 2
  assert urls[0].startswith("https://storage.googleapis.com/cvdf-datasets/mnist/")
  assert sorted(os.listdir(tmp_path / "cache" / "mnist")) == sorted(_IDX_TEST_FILES)
  data.load_dataset("mnist", "test")  # Cached now: no second download.
  assert len(urls) == 2


def test_download_is_atomic_and_md5_checked(tmp_path):
  src = tmp_path / "src.bin"
  src.write_bytes(b"payload" * 1000)
  good = hashlib.md5(src.read_bytes()).hexdigest()
  dest = tmp_path / "out" / "file.gz"
  with pytest.raises(OSError, match="MD5 mismatch"):
    _REAL_DOWNLOAD(src.as_uri(), str(dest), "0" * 32)
  assert not os.listdir(tmp_path / "out")  # No partial or temp file left.
  _REAL_DOWNLOAD(src.as_uri(), str(dest), good)
  assert dest.read_bytes() == src.read_bytes() and os.listdir(tmp_path / "out") == ["file.gz"]


# ----------------------------------------------------------------------------
# CIFAR-10 in its exact python-pickle format.


def _write_cifar(folder, batch_sizes=(4, 4, 4, 4, 4), test_size=3):
  """Writes protocol-2 CIFAR pickles; pixel value encodes (example, channel)."""
  folder.mkdir(parents=True, exist_ok=True)
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  offset = 0
  for name, n in zip(names, list(batch_sizes) + [test_size]):
    planes = np.zeros((n, 3, 32, 32), np.uint8)
    for k in range(n):
      for ch in range(3):
        planes[k, ch] = (10 * (offset + k) + ch) % 256
      planes[k, 0, 1, 2] = 255  # Marks red at row 1, column 2.
    batch = {b"batch_label": name.encode(), b"data": planes.reshape(n, 3072),
             b"labels": [(offset + k) % 10 for k in range(n)],
             b"filenames": [f"img{offset + k}.png".encode() for k in range(n)]}
    with open(folder / name, "wb") as f:
      pickle.dump(batch, f, protocol=2)
    offset += n
  names = [n.encode() for n in ("airplane automobile bird cat deer dog frog "
                                "horse ship truck").split()]
  with open(folder / "batches.meta", "wb") as f:
    pickle.dump({b"label_names": names, b"num_cases_per_batch": 10000,
                 b"num_vis": 3072}, f, protocol=2)


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-py"])
def test_cifar10(tmp_path, subfolder):
  _write_cifar(tmp_path / subfolder if subfolder else tmp_path)
  train = data.load_dataset("cifar10", "train", str(tmp_path))
  test = data.load_dataset("cifar10", "test", str(tmp_path))
  assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (3, 32, 32, 3)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert train.num_classes == 10
  np.testing.assert_array_equal(train.labels, np.arange(20) % 10)
  np.testing.assert_array_equal(test.labels, np.arange(20, 23) % 10)
  for k in (0, 7, 19):
    for ch in range(3):
      assert train.images[k, 0, 0, ch] == 10 * k + ch
    assert train.images[k, 1, 2, 0] == 255
    assert train.images[k, 2, 1, 0] == 10 * k  # Not transposed spatially.
  assert test.images[2, 31, 31, 1] == 10 * 22 + 1


def test_cifar10_download_extracts_tarball(tmp_path, monkeypatch):
  monkeypatch.delenv("VQJAX_NO_DOWNLOAD", raising=False)  # CI sets it
  monkeypatch.delenv("VQJAX_DATA_DIR", raising=False)
  _write_cifar(tmp_path / "src" / "cifar-10-batches-py")
  tarball = tmp_path / "cifar-10-python.tar.gz"
  with tarfile.open(tarball, "w:gz") as tar:
    tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
  monkeypatch.setattr(files, "download", lambda url, path, md5: shutil.copy(tarball, path))
  ds = data.load_dataset("cifar10", "test")
  assert ds.images.shape == (3, 32, 32, 3)
  cache = tmp_path / "cache" / "cifar10"
  assert os.listdir(cache) == ["cifar-10-batches-py"]  # Tarball and temp dir gone.


def test_cifar10_errors(tmp_path, monkeypatch):
  _write_cifar(tmp_path)
  with open(tmp_path / "data_batch_3", "wb") as f:
    pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f, protocol=2)
  with pytest.raises(data.DataError, match=r"data_batch_3.*\[n, 3072\]"):
    data.load_dataset("cifar10", "train", str(tmp_path))
  with open(tmp_path / "data_batch_3", "wb") as f:
    pickle.dump({b"data": np.zeros((4, 3072), np.uint8)}, f, protocol=2)
  with pytest.raises(data.DataError, match="data_batch_3.*b'labels'"):
    data.load_dataset("cifar10", "train", str(tmp_path))
  (tmp_path / "test_batch").write_bytes(b"\x80\x02}q\x00(")  # Truncated pickle.
  with pytest.raises(data.DataError, match="test_batch.*not a readable"):
    data.load_dataset("cifar10", "test", str(tmp_path))
  monkeypatch.delenv("VQJAX_DATA_DIR", raising=False)
  with pytest.raises(data.DataError, match="data_batch_1.*cifar10"):
    data.load_dataset("cifar10", "train")


# ----------------------------------------------------------------------------
# TFDS (mocked: no files, no TensorFlow).


def test_tfds_mock():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load(ml_collections.ConfigDict({"name": "tfds:mnist", "dir": ""}), "train")
    small = data.load_dataset("tfds:mnist", "test", image_size=14)
    images, small_images = _images(ds), _images(small)
    labels = ds.batch(np.arange(len(ds)))["label"]
  assert ds.name == "tfds:mnist" and images.shape == (20, 28, 28, 1)
  assert images.dtype == np.uint8 and labels.dtype == np.int32
  assert ds.num_classes == 10 and 0 <= labels.min() and labels.max() <= 9
  assert small_images.shape == (20, 14, 14, 1) and small.shape == (14, 14, 1)


def test_tfds_unknown_builder():
  with pytest.raises(data.DataError, match="tfds:no_such_builder_xyz"):
    data.load_dataset("tfds:no_such_builder_xyz", "train")


# ----------------------------------------------------------------------------
# Folder of images.


def _png(path, size, mode="RGB", value=0):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, value).save(path)


def test_folder_resize_and_holdout(tmp_path):
  sizes = [(40, 30), (20, 20), (17, 33), (64, 64)] * 3
  for i, size in enumerate(sizes):
    _png(tmp_path / "sub" / f"{i:02d}.png", size, value=(i, 2 * i, 3 * i))
  (tmp_path / "notes.txt").write_text("not an image")
  train = data.load_dataset("folder", "train", str(tmp_path), image_size=16)
  test = data.load_dataset("folder", "test", str(tmp_path), image_size=16)
  # Files 0 and 10 (every 10th in sorted order) are held out for 'test'.
  assert _images(train).shape == (10, 16, 16, 3)
  assert _images(test).shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(test[1]["image"][8, 8], [10, 20, 30])
  np.testing.assert_array_equal(train[0]["image"][8, 8], [1, 2, 3])
  assert train.num_classes == 0 and not train.labels.any()  # Only one folder level.
  with pytest.raises(data.DataError, match="different sizes.*image_size"):
    data.load_dataset("folder", "train", str(tmp_path))


def test_folder_classes_and_greyscale(tmp_path):
  for split, n in (("train", 3), ("test", 1)):
    for cls in ("cat", "dog"):
      for i in range(n):
        _png(tmp_path / split / cls / f"{i}.png", (8, 8), "L", 100 if cls == "dog" else 5)
  _png(tmp_path / "test" / "emu" / "0.png", (8, 8), "L", 50)
  cfg = ml_collections.ConfigDict({"name": "folder", "dir": str(tmp_path), "image_size": 0})
  train, test = data.load(cfg, "train"), data.load(cfg, "test")
  assert _images(train).shape == (6, 8, 8, 1) and _images(test).shape == (3, 8, 8, 1)
  assert train.num_classes == test.num_classes == 3  # cat, dog, emu.
  np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(test.labels, [0, 1, 2])
  np.testing.assert_array_equal(_images(test)[:, 0, 0, 0], [5, 100, 50])


def test_folder_mixed_modes_become_rgb(tmp_path):
  _png(tmp_path / "a.png", (6, 6), "L", 7)
  _png(tmp_path / "b.jpg", (6, 6), "RGB", (200, 0, 0))
  _png(tmp_path / "c.png", (6, 6), "RGBA", (0, 0, 90, 255))
  ds = data.load_dataset("folder", "train", str(tmp_path))
  assert _images(ds).shape == (2, 6, 6, 3)
  assert ds[1]["image"][0, 0].tolist() == [0, 0, 90]


def test_folder_errors(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(data.DataError, match=f"images.*under {tmp_path / 'empty'}"):
    data.load_dataset("folder", "train", str(tmp_path / "empty"))
  with pytest.raises(data.DataError, match="does not exist"):
    data.load_dataset("folder", "train", str(tmp_path / "missing"))
  with pytest.raises(data.DataError, match="data.dir"):
    data.load_dataset("folder", "train", None)
  _png(tmp_path / "bad" / "a.png", (4, 4))
  (tmp_path / "bad" / "b.png").write_bytes(b"definitely not a png")
  with pytest.raises(data.DataError, match="b.png.*not a readable image"):
    data.load_dataset("folder", "train", str(tmp_path / "bad"))
  _png(tmp_path / "late" / "a.png", (4, 4))
  _png(tmp_path / "late" / "b.png", (4, 4))
  late = data.load_dataset("folder", "train", str(tmp_path / "late"))
  (tmp_path / "late" / "b.png").write_bytes(b"truncated after opening")
  with pytest.raises(data.DataError, match="b.png.*not a readable image"):
    late.batch([0, 1])


def test_folder_is_read_lazily(tmp_path, monkeypatch):
  """Opening a split reads headers only; a batch decodes just its files."""
  for i in range(30):
    _png(tmp_path / "train" / f"{i:02d}.png", (5, 5), value=(i, 0, 0))
  _png(tmp_path / "test" / "0.png", (5, 5))
  from vqjax.data import folder  # pylint: disable=g-import-not-at-top
  decoded = []
  real_decode = folder._decode_image
  monkeypatch.setattr(folder, "_decode_image",
                      lambda path, *a: decoded.append(path) or real_decode(path, *a))
  source = data.load_dataset("folder", "train", str(tmp_path))
  assert len(source) == 30 and not decoded
  batch = source.batch([3, 17])
  assert [os.path.basename(p) for p in decoded] == ["03.png", "17.png"]
  assert batch["image"][:, 0, 0, 0].tolist() == [3, 17]
  first = next(data.train_batches(source, 4, seed=0, process_index=0,
                                  process_count=1, read_threads=0))
  assert first["image"].shape == (4, 5, 5, 3) and len(decoded) == 6
  with pytest.raises(data.DataError, match="splits"):
    data.load_dataset("folder", "validation", str(tmp_path / "bad"))


# ----------------------------------------------------------------------------
# Dataset, variance and batching on small fakes.


def test_dataset_validation_and_unknown_name():
  ds = _fake()
  assert ds.shape == (4, 3, 2) and len(ds) == 10
  with pytest.raises(data.DataError, match="uint8"):
    data.Dataset("x", ds.images.astype(np.float32), ds.labels, 5)
  with pytest.raises(data.DataError, match="int32"):
    data.Dataset("x", ds.images, ds.labels.astype(np.int64), 5)
  with pytest.raises(data.DataError, match="Unknown dataset"):
    data.load_dataset("imagenet", "train")
  assert issubclass(data.DataError, ValueError)


def test_data_variance():
  ds = _fake(n=37, h=5, w=7, c=3)
  expected = np.var(ds.images / 255.0)
  np.testing.assert_allclose(data.data_variance(ds), expected, rtol=1e-12)
  old = pipeline._VARIANCE_CHUNK_ELEMENTS
  try:
    pipeline._VARIANCE_CHUNK_ELEMENTS = 200  # Force many chunks.
    np.testing.assert_allclose(data.data_variance(ds), expected, rtol=1e-12)
  finally:
    pipeline._VARIANCE_CHUNK_ELEMENTS = old


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_batches_deterministic_and_resumable_from_their_state():
  ds = _fake(n=10)
  kwargs = dict(global_batch_size=3, process_index=0, process_count=1)
  first = _take(data.train_batches(ds, seed=7, **kwargs), 8)
  again = _take(data.train_batches(ds, seed=7, **kwargs), 8)
  other = _take(data.train_batches(ds, seed=8, **kwargs), 8)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))
  assert first[0]["image"].shape == (3, 4, 3, 2) and first[0]["image"].dtype == np.uint8
  assert first[0]["label"].dtype == np.int32
  # Resume from the saved state after 2 (mid epoch 0) and 4 (epoch 1) steps.
  for k in (2, 4):
    interrupted = data.train_batches(ds, seed=7, **kwargs)
    _take(interrupted, k)
    state = json.loads(json.dumps(interrupted.get_state()))  # As checkpointed.
    resumed = data.train_batches(ds, seed=7, **kwargs)
    resumed.set_state(state)
    for a, b in zip(first[k:], _take(resumed, 8 - k)):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


def test_train_batches_epochs():
  ds = data.Dataset("ids", np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1),
                    np.arange(12, dtype=np.int32), 12)
  batches = _take(data.train_batches(ds, 4, seed=0, process_index=0,
                                     process_count=1), 9)
  epochs = [np.concatenate([b["label"] for b in batches[e * 3:(e + 1) * 3]])
            for e in range(3)]
  for order in epochs:
    np.testing.assert_array_equal(np.sort(order), np.arange(12))  # Each once.
  assert not np.array_equal(epochs[0], epochs[1])  # Reshuffled every epoch.
  for b in batches:
    np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["label"])


def test_train_batches_process_sharding():
  """Each process reads its rows of the same global batches."""
  ds = _fake(n=30)
  single = _take(data.train_batches(ds, 8, seed=3, process_index=0, process_count=1), 5)
  shards = [_take(data.train_batches(ds, 8, seed=3, process_index=p, process_count=2), 5)
            for p in range(2)]
  for step, whole in enumerate(single):
    assert shards[0][step]["image"].shape[0] == 4
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][key], shards[1][step][key]]), whole[key])


def test_train_batches_errors():
  ds = _fake(n=10)
  with pytest.raises(ValueError, match="multiple of the process count 2"):
    data.train_batches(ds, 3, seed=0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="larger than the 10 examples"):
    data.train_batches(ds, 12, seed=0, process_index=0, process_count=1)
  with pytest.raises(data.DataError, match="process_index"):
    data.train_batches(ds, 4, seed=0, process_index=2, process_count=2)
  batch = next(data.train_batches(ds, 4, seed=0))  # jax's process defaults.
  assert batch["image"].shape[0] == 4


def test_variance_of_a_lazy_source_is_estimated_from_a_sample(monkeypatch):
  ds = _fake(n=50, h=3, w=3, c=1)

  class Lazy(data.base.LazySource):
    name, shape, num_classes = "lazy", ds.shape, 0
    __len__ = ds.__len__
    __getitem__ = ds.__getitem__

  np.testing.assert_allclose(data.data_variance(Lazy()),
                             np.var(ds.images / 255.0), rtol=1e-12)
  monkeypatch.setattr(pipeline, "VARIANCE_SAMPLE", 20)
  estimate = data.data_variance(Lazy())
  assert estimate != pytest.approx(np.var(ds.images / 255.0), rel=1e-12)
  assert estimate == pytest.approx(np.var(ds.images / 255.0), rel=0.3)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_once(process_count):
  ds = data.Dataset("ids", np.arange(11, dtype=np.uint8).reshape(11, 1, 1, 1),
                    np.arange(11, dtype=np.int32), 11)
  per_process = [list(data.eval_batches(ds, 4, p, process_count)) for p in range(process_count)]
  assert all(len(batches) == 3 for batches in per_process)
  seen = []
  for batches in per_process:
    for b in batches:
      assert b["image"].shape == (4 // process_count, 1, 1, 1)
      assert b["mask"].dtype == np.float32 and b["label"].dtype == np.int32
      seen.extend(b["label"][b["mask"] == 1].tolist())
      assert (b["label"][b["mask"] == 0] == 0).all()  # Padding repeats row 0.
  assert sorted(seen) == list(range(11))
  assert sum(b["mask"].sum() for batches in per_process for b in batches) == 11
  if process_count == 1:
    np.testing.assert_array_equal(per_process[0][-1]["mask"], [1, 1, 1, 0])
