"""tensorflow-datasets as a last resort (cifar10, cifar100, svhn_cropped).

Two uses, both after every local format was tried:
- an already-prepared tfds data dir (`<root>/tensorflow_datasets` or `$TFDS_DATA_DIR`);
- with `download=True`, tfds's own download. A socket preflight (3 s) to the dataset's
  host comes first, so an offline machine fails in seconds instead of after tfds's
  minutes of retries.
tfds (and tensorflow, which it needs to read or prepare its files) is imported lazily.
"""

from __future__ import annotations

import os
import pathlib
import socket
from collections.abc import Sequence

import numpy as np

from fastjax.data.errors import ROOT_HINT, DatasetNotFoundError
from fastjax.data.types import Dataset

# Where tfds 4.9 fetches each dataset from (its builders' _URL).
HOSTS = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu",
         "svhn_cropped": "ufldl.stanford.edu"}
PREFLIGHT_TIMEOUT_S = 3.0


def data_dirs(roots: Sequence[pathlib.Path]) -> list[pathlib.Path]:
    dirs = [r / "tensorflow_datasets" for r in roots]
    if os.environ.get("TFDS_DATA_DIR"):
        dirs.append(pathlib.Path(os.environ["TFDS_DATA_DIR"]))
    return dirs


def reachable(host: str, port: int = 443, timeout: float = PREFLIGHT_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _import_tfds(why: str):
    try:
        import tensorflow  # noqa: F401  tfds needs it to read/prepare tfrecords
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DatasetNotFoundError(
            f"{why}, but that needs tensorflow-datasets and tensorflow ({e}). Install "
            f"`fastjax[tfds]`, or put the dataset's native files under the data root."
        ) from e
    return tfds


def _as_dataset(name, tfds_name, split, data_dir, label_key, download) -> Dataset:
    tfds = _import_tfds(f"{name}: reading tfds data dir {data_dir}")
    builder = tfds.builder(tfds_name, data_dir=str(data_dir) if data_dir else None)
    if download:
        builder.download_and_prepare()
    batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    names = tuple(builder.info.features[label_key].names)
    return Dataset(name, split, np.asarray(batch["image"], np.uint8),
                   np.asarray(batch[label_key], np.int64), names)


def load(name: str, tfds_name: str, split: str, roots: Sequence[pathlib.Path], *,
         download: bool, label_key: str = "label") -> Dataset | None:
    """A prepared tfds copy, or a tfds download when allowed; None if neither applies."""
    for d in data_dirs(roots):
        if (d / tfds_name).is_dir():
            return _as_dataset(name, tfds_name, split, d, label_key, download=False)
    if not download:
        return None
    host = HOSTS[tfds_name]
    if not reachable(host):
        raise DatasetNotFoundError(
            f"{name}: download=True but {host}:443 is unreachable (no network within "
            f"{PREFLIGHT_TIMEOUT_S:.0f} s). Put the dataset's files in a directory instead and "
            f"{ROOT_HINT}.")
    dirs = data_dirs(roots)
    return _as_dataset(name, tfds_name, split, dirs[0] if dirs else None, label_key,
                       download=True)
