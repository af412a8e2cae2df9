"""Uniform read access to a directory, a .tar/.tar.gz/.tgz or a .zip of files.

Members are yielded as (posix relative path, bytes) in one streaming pass, so a gzip
archive is decompressed once and never seeked. Damaged archives raise
`DatasetCorruptError` naming the file.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator

from fastjax.data.errors import DatasetCorruptError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def is_archive(path: pathlib.Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def iter_members(path: pathlib.Path, want: Callable[[str], bool]
                 ) -> Iterator[tuple[str, bytes]]:
    """Yields (relative posix path, content) of regular files for which `want` holds."""
    path = pathlib.Path(path)
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for fn in sorted(filenames):
                full = pathlib.Path(dirpath, fn)
                rel = full.relative_to(path).as_posix()
                if want(rel):
                    yield rel, full.read_bytes()
        return
    lower = path.name.lower()
    try:
        if lower.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and want(info.filename):
                        yield info.filename, zf.read(info)
        else:
            with tarfile.open(path, "r|*") as tf:  # stream: one pass, no seeks
                for m in tf:
                    name = _clean(m.name)
                    if m.isfile() and want(name):
                        yield name, tf.extractfile(m).read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error,
            gzip.BadGzipFile) as e:
        raise DatasetCorruptError(path, f"{type(e).__name__}: {e}") from e
    except OSError as e:  # gzip reports truncation as OSError
        if isinstance(e, FileNotFoundError):
            raise
        raise DatasetCorruptError(path, f"{type(e).__name__}: {e}") from e


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def read_members(path: pathlib.Path, names: Callable[[str], bool]) -> dict[str, bytes]:
    """All wanted members in memory, keyed by basename (small metadata/batch files)."""
    return {rel.rsplit("/", 1)[-1]: data for rel, data in iter_members(path, names)}
