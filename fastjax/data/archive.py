"""Uniform read access to a directory, a .tar/.tar.gz/.tgz or a .zip of files.

Members are yielded as (posix relative path, bytes) in one streaming pass, so a gzip
archive is decompressed once and never seeked. A tar archive is verified to its end
before any member is yielded: the compressed stream's checksum and length trailer, every
member header (a damaged one is an error, not the end of the archive) and the
end-of-archive marker. A truncated or overwritten archive therefore raises
`DatasetCorruptError` naming the file, instead of reading as a smaller dataset; zip
members are checked by their CRCs as they are read.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import pathlib
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator

from fastjax.data.errors import DatasetCorruptError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
# Leading bytes of the compressed streams a .tar may be wrapped in; each opener's
# reader checks its format's checksum when read to the end.
_COMPRESSED = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


def is_archive(path: pathlib.Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


class _StrictTarInfo(tarfile.TarInfo):
    """Header parsing that treats a damaged or missing header as damage.

    tarfile ends the member list quietly at the first header it cannot parse (bad
    checksum, a short or absent block), which is how a cut or overwritten archive read
    as a smaller dataset. Only a block of zeros (the end-of-archive marker) ends it here.
    """

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            raise  # a zero block: the real end of the archive
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            raise tarfile.ReadError(f"the archive ends at byte {tf.offset:,} without its "
                                    f"end-of-archive marker") from None
        except tarfile.InvalidHeaderError as e:
            raise tarfile.ReadError(f"damaged member header at byte {tf.offset:,} ({e})"
                                    ) from None


def _open_tar_stream(path: pathlib.Path):
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, opener in _COMPRESSED:
        if head.startswith(magic):
            return opener(path, "rb")
    return open(path, "rb")


def _read_tar(path: pathlib.Path, want: Callable[[str], bool]) -> list[tuple[str, bytes]]:
    """Wanted regular files of a tar, read and verified to the archive's last byte."""
    out = []
    with _open_tar_stream(path) as raw, \
            tarfile.open(fileobj=raw, mode="r|", tarinfo=_StrictTarInfo) as tf:
        for m in tf:  # stream: one pass, no seeks
            name = _clean(m.name)
            if m.isfile() and want(name):
                out.append((name, tf.extractfile(m).read()))
        # After the marker only zero padding may follow; reading it to the end also
        # makes the decompressor check the stream's checksum and length.
        while chunk := tf.fileobj.read(1 << 16):
            if chunk.count(0) != len(chunk):
                raise tarfile.ReadError(f"unexpected data after the end-of-archive marker "
                                        f"at byte {tf.offset:,}")
    return out


def iter_members(path: pathlib.Path, want: Callable[[str], bool]
                 ) -> Iterator[tuple[str, bytes]]:
    """Yields (relative posix path, content) of regular files for which `want` holds.

    From a tar archive nothing is yielded until the whole archive has been verified.
    """
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
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:  # the central directory lists every member
                for info in zf.infolist():
                    if not info.is_dir() and want(info.filename):
                        yield info.filename, zf.read(info)  # checks the member's CRC
            return
        members = _read_tar(path, want)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as e:
        raise DatasetCorruptError(path, f"{type(e).__name__}: {e}") from e
    except OSError as e:  # gzip's BadGzipFile (CRC, length) is an OSError
        if isinstance(e, FileNotFoundError):
            raise
        raise DatasetCorruptError(path, f"{type(e).__name__}: {e}") from e
    yield from members


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def read_members(path: pathlib.Path, names: Callable[[str], bool]) -> dict[str, bytes]:
    """All wanted members in memory, keyed by basename (small metadata/batch files)."""
    return {rel.rsplit("/", 1)[-1]: data for rel, data in iter_members(path, names)}
