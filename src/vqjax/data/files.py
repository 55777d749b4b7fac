"""Finding a dataset's files, and downloading them once (MD5-checked).

Files are looked up in `data_dir` (or `config.data.dir`) if given, else in
`$VQJAX_DATA_DIR/<name>/`, else in the download cache
`$VQJAX_CACHE_DIR/<name>/` (default `~/.cache/vqjax/<name>/`). Missing files
are downloaded there unless `VQJAX_NO_DOWNLOAD=1`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence

from vqjax.data.base import DataError

_DOWNLOAD_TIMEOUT_S = 60


def downloads_disabled() -> bool:
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


def download(url: str, path: str, md5: str):
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


def locate(name: str, split: str, files: Sequence[str], data_dir: str | None,
            fetch, subfolders: Sequence[str] = ()) -> str:
  """Returns a folder holding all `files`, calling `fetch(target)` if needed.

  `fetch(target)` downloads the files into `target` (raising OSError on
  failure); it runs at most once, and not at all if VQJAX_NO_DOWNLOAD=1.
  """
  dirs, target = _candidate_dirs(name, data_dir, subfolders)
  folder = _find_files(dirs, files)
  if folder is not None:
    return folder
  if downloads_disabled():
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
