"""Writing files so that a kill or a full disk never leaves half of one, and asking
whether a directory takes new files before any work is done for it.

Every writer of fastjax's outputs (checkpoint digests, config.json, the metrics log's
rewrite, cache entries, annotations, a site's training set) goes through `atomic_write`;
every "can I write here?" question through `unwritable`.

>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write_text(d / "a.txt", "hello")
>>> (d / "a.txt").read_text(), unwritable(d) is None
('hello', True)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO


def atomic_write(path: os.PathLike | str, write: Callable[[IO[bytes]], object]) -> None:
    """Replace `path` by what `write(f)` writes into a binary file: a temporary file in
    the same directory, flushed to disk, then renamed over `path` (readers see the old
    file or the new one, never a part). The temporary file is removed on failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def unwritable(directory: os.PathLike | str) -> str | None:
    """Why `directory` cannot take a new file (created when missing), or None when it can.
    A path that exists as a file is named as such."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        return f"{d} is a file, not a directory"
    try:
        d.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=d).close()
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None
