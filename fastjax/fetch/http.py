"""One file over HTTP(S): resumable, checksummed, moved into place only when intact.

The bytes go to ``<dest>.part``; an interrupted transfer (a dropped connection, Ctrl-C,
a full disk) leaves it there and the next attempt asks for the rest with an HTTP Range
request (a server that ignores Range sends the whole file, and the part is restarted).
The finished file's MD5 is compared with the published one before an atomic rename
makes it ``dest``; a mismatch moves it aside to ``<dest>.checksum-mismatch`` (kept for
inspection, never read: the loaders look for the release's exact file names).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 20
TIMEOUT_S = 20.0  # per connect / per read: a stalled link fails, a slow one does not
RETRIES = 3  # transfers cut mid-way are resumed this many times within one call
USER_AGENT = "fastjax-fetch"


class FetchError(RuntimeError):
    """A download that cannot complete; the message is one line saying what to do."""


def md5_of(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)  # the datasets publish MD5
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def aside(path: Path) -> Path:
    return path.with_name(path.name + ".checksum-mismatch")


def _open(url: str, start: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if start:
        req.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(req, timeout=timeout)


def _transfer(url: str, part: Path, timeout: float, bar) -> None:
    """Appends the rest of `url` to `part` (from its current size)."""
    start = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, start, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing left to send: the part is whole
            return
        raise
    with resp:
        if start and resp.status != 206:  # Range ignored: the whole file again
            start = 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        bar.reset(total=total)
        bar.update(start)
        with open(part, "ab" if start else "wb") as f:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"connection closed after {part.stat().st_size:,} of "
                                  f"{total:,} bytes")


def download(url: str, dest: Path, md5: str | None, *, progress: bool = True,
             timeout: float = TIMEOUT_S, retries: int = RETRIES) -> Path:
    """Fetches `url` into `dest` (resuming `dest`.part), checks `md5`, renames it in place.

    Raises `FetchError` (one line) when the host cannot be reached, the transfer keeps
    failing (the part is kept: run again to resume) or the checksum differs (the file is
    moved aside).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with tqdm(desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024,
              disable=not progress, leave=False) as bar:
        for attempt in range(retries + 1):
            try:
                _transfer(url, part, timeout, bar)
                break
            except urllib.error.HTTPError as e:
                raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
            except (urllib.error.URLError, socket.timeout, ConnectionError,
                    http.client.HTTPException) as e:  # the network's; a full disk propagates
                reason = getattr(e, "reason", e)
                had = part.stat().st_size if part.exists() else 0
                if attempt == retries or not had:  # unreachable host: no point retrying
                    resume = (f"; {had:,} bytes kept in {part}, run the same command again "
                              f"to resume") if had else ""
                    raise FetchError(f"cannot download {url}: {reason} (no network, or the "
                                     f"host is down?){resume}") from None
                time.sleep(min(2 ** attempt, 5))
    got = md5_of(part)
    if md5 is not None and got != md5:
        bad = aside(dest)
        os.replace(part, bad)
        raise FetchError(f"checksum mismatch for {url}: MD5 {got}, published {md5}; the file "
                         f"is kept aside as {bad} and not used (delete it and fetch again)")
    os.replace(part, dest)  # same directory: atomic
    return dest
