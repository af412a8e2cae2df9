"""On-disk cache of decoded arrays, so costly decodes (50k JPEGs) happen once.

Entries are uncompressed .npz files under `$FASTJAX_CACHE` (else
`~/.cache/fastjax/datasets`), keyed by the source's files (path, size, mtime): editing or
replacing a source file changes the key, so a stale entry is never read. Writes go to a
temporary file renamed into place, so a killed process never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import zipfile
from collections.abc import Iterable

import numpy as np

from fastjax.files import atomic_write, unwritable

# Bump when a reader's output changes for the same source files. 2: archives and release
# sizes are verified before caching; entries of version 1 may hold a partial split.
FORMAT_VERSION = 2


def cache_dir() -> pathlib.Path:
    env = os.environ.get("FASTJAX_CACHE")
    base = pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "fastjax"
    return base / "datasets"


def fingerprint(paths: Iterable[pathlib.Path], **extra) -> str:
    """Hash of (resolved path, size, mtime_ns) of each path plus reader options."""
    items = []
    for p in sorted(set(pathlib.Path(p).resolve() for p in paths)):
        st = p.stat()
        items.append([str(p), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"v": FORMAT_VERSION, "files": items, "extra": extra},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _entry(name: str, split: str, key: str) -> pathlib.Path:
    return cache_dir() / f"{name}-{split}-{key}.npz"


def load(name: str, split: str, key: str):
    """Returns (images, labels, class_names) or None on a miss (or an unreadable entry)."""
    path = _entry(name, split, key)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["images"], z["labels"], tuple(str(s) for s in z["class_names"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # a damaged entry is just a miss; it is rewritten below


def store(name: str, split: str, key: str, images, labels, class_names) -> None:
    """Atomically writes one entry (tmp file in the same directory, then rename)."""
    path = _entry(name, split, key)
    if unwritable(path.parent) is not None:
        return  # a read-only home must not stop loading; we just don't cache
    atomic_write(path, lambda f: np.savez(f, images=images, labels=labels,
                                          class_names=np.array(class_names, dtype=str)))
