"""Shared test helpers: the real data folder, configs and subprocess runs."""

import atexit
import functools
import gzip
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tests compile the same tiny models in many processes; JAX's persistent
# compilation cache (fresh for each test session) makes every compile after
# the first a lookup. Set before any test module imports jax.
# Under pytest-xdist the workers of one run share a cache (the run's uid).
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"vqjax-test-xla-cache-{_RUN}") if _RUN else
                      tempfile.mkdtemp(prefix="vqjax-test-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# Read once, before any test points VQJAX_DATA_DIR at the MNIST subset.
_DATA_DIR = os.environ.get("VQJAX_DATA_DIR")


def real_data_dir() -> str | None:
  for path in (_DATA_DIR,
               os.path.join(REPO, "..", "shared", "data")):
    if path and os.path.isdir(os.path.join(path, "mnist")):
      return os.path.abspath(path)
  return None


# The pipeline tests train, encode and evaluate on the first images of the
# real MNIST splits: encoding or scoring the whole of them cost most of those
# tests' time and tested nothing more. test_data.py reads the full files.
MNIST_SUBSET = {"train": 4000, "test": 1000}
_IDX = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _write_first(src: str, dst: str, n: int) -> None:
  """Copies the first n items of the gzipped IDX file src to dst."""
  with gzip.open(src, "rb") as f:
    raw = f.read()
  ndim = raw[3]
  dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
  item = int(np.prod(dims[1:], dtype=np.int64))
  header = raw[:4] + struct.pack(f">{ndim}I", n, *dims[1:])
  with gzip.open(dst, "wb", compresslevel=1) as f:
    f.write(header + raw[4 + 4 * ndim:4 + 4 * ndim + n * item])


@functools.cache
def subset_data_dir() -> str | None:
  """A data folder (made once per test process, removed at its exit) whose
  MNIST is the first `MNIST_SUBSET` images of each real split; None without
  the real files."""
  real = real_data_dir()
  if real is None:
    return None
  root = tempfile.mkdtemp(prefix="vqjax-test-data-")
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  os.makedirs(os.path.join(root, "mnist"))
  for split, n in MNIST_SUBSET.items():
    for name in _IDX[split]:
      _write_first(os.path.join(real, "mnist", name),
                   os.path.join(root, "mnist", name), n)
  return root


@pytest.fixture
def mnist_dir(monkeypatch):
  """`subset_data_dir()`, as VQJAX_DATA_DIR for the test and its subprocesses."""
  path = subset_data_dir()
  if path is None:
    pytest.skip("real MNIST not found: set VQJAX_DATA_DIR")
  monkeypatch.setenv("VQJAX_DATA_DIR", path)
  return path


def load_config(name: str, variant: str = ""):
  """`configs/<name>.py:get_config(variant)`, as the CLI would load it."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def run_python(args: list[str], env: dict | None = None, timeout: int = 600,
               cwd: str = REPO) -> subprocess.CompletedProcess:
  """Runs `python <args>` in a fresh interpreter (so XLA_FLAGS take effect)."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def random_pixelcnn_params(model, *args, seed=0, logit_scale=1.0,
                           open_relus=False):
  """Random parameters from NumPy, in the shapes `model.init` would give.

  Avoids model.init, whose random initializers compile slowly on XLA:CPU.
  Kernels are LeCun-normal, tables N(0, 1), biases N(0, 0.1^2), so gates stay
  clear of saturation (whose float32 derivative can round to exactly zero).
  `logit_scale` scales the output layer (conditionals far from uniform);
  `open_relus` gives the ReLUs feeding the head large positive biases.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), *args)
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = jax.tree_util.keystr(path)
    value = rng.standard_normal(x.shape).astype(np.float32)
    if "kernel" in name:
      value /= np.sqrt(np.prod(x.shape[:-1]))
    elif "bias" in name:
      value *= 0.1
      if open_relus and "skip_bias" in name:
        value += 1.0
      elif open_relus and "head_hidden_bias" in name:
        value += 50.0
    if "head_out" in name:
      value *= logit_scale
    return jnp.asarray(value)

  return jax.tree_util.tree_map_with_path(leaf, shapes)
