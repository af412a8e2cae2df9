"""Encoder weights from the Hugging Face hub into its local cache, safetensors only.

`huggingface_hub` does the transfer (progress bars; an interrupted file stays as
``blobs/<etag>.incomplete`` and the next call resumes it with an HTTP Range request; the
snapshot links appear only for complete files). Before anything is downloaded the
revision's file list is read (``/api/models/<repo>/revision/<rev>``) and the files fastjax
needs (`HubRepo.files`: config.json and a .safetensors, never a pickle) must be in it.
After, each file is checked against its etag, which names the blob: the sha256 of a
Git-LFS file, the Git blob sha1 of a small one. A mismatch moves the blob aside and
unlinks it from the snapshot, so the loaders never see it. ``$HF_ENDPOINT`` chooses
the hub (a mirror), ``$HF_HUB_CACHE`` / ``$HF_HOME`` the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from fastjax.data.tfds_route import reachable
from fastjax.encode import hub
from fastjax.fetch.http import CHUNK, FetchError

DEFAULT_ENDPOINT = "https://huggingface.co"
PREFLIGHT_S = 3.0


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    if algo == "sha1":  # Git's blob id: sha1 over "blob <size>\0" + content
        h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(link: Path) -> None:
    """Checks a snapshot file against the etag its blob is named by; moves a bad blob
    aside (``<blob>.checksum-mismatch``) and removes the link. Raises `FetchError`."""
    blob = Path(os.path.realpath(link))
    etag = blob.name
    algo = {64: "sha256", 40: "sha1"}.get(len(etag)) if re.fullmatch(r"[0-9a-f]+", etag) else None
    if algo is None:  # a cache without symlinks holds copies: no etag to compare with
        return
    got = _digest(blob, algo)
    if got != etag:
        bad = blob.with_name(blob.name + ".checksum-mismatch")
        os.replace(blob, bad)
        link.unlink(missing_ok=True)
        raise FetchError(f"checksum mismatch for {link.name}: {algo} {got}, the hub's etag "
                         f"{etag}; the file is kept aside as {bad} and not used (fetch again)")


def _one_line(e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def fetch(ref: hub.HubRepo, *, progress: bool = True, force: bool = False) -> Path:
    """Downloads `ref`'s files at its revision into the hub cache (again with `force`);
    returns the snapshot directory (the value `encoder.checkpoint` resolves a hub id to)."""
    try:
        import huggingface_hub as hh
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError as e:
        raise FetchError(f"fetching encoder weights needs huggingface_hub ({e}); install "
                         f"fastjax[fetch]") from None
    url = endpoint()
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    # Fail in seconds offline (the hub client retries for longer); through a proxy the
    # client's own connection is the test.
    proxied = urllib.request.getproxies().get(parts.scheme)
    if not proxied and not reachable(parts.hostname or "", port, PREFLIGHT_S):
        raise FetchError(f"cannot reach {parts.hostname}:{port} within {PREFLIGHT_S:.0f} s "
                         f"(no network, or the hub is down?): {ref.repo} was not fetched")
    (disable_progress_bars if not progress else enable_progress_bars)()
    try:
        info = hh.HfApi(endpoint=url).model_info(ref.repo, revision=ref.revision)
        listed = {s.rfilename for s in info.siblings or ()}
        missing = [f for f in ref.files if f not in listed]
        if missing:
            raise FetchError(
                f"{ref.repo}@{ref.revision} has no {', '.join(missing)}; fastjax reads "
                f"safetensors weights only: choose a revision that has them "
                f"(python -m fastjax.fetch {ref.repo}@<revision>)")
        for name in ref.files:
            link = hh.hf_hub_download(ref.repo, name, revision=ref.revision,
                                      cache_dir=hub.cache_dir(), endpoint=url,
                                      force_download=force)
            verify(Path(link))
    except FetchError:
        raise
    except Exception as e:  # the hub's errors (HTTP, offline mode, a cut transfer): one line
        raise FetchError(f"cannot fetch {ref.repo}@{ref.revision} from {url}: "
                         f"{_one_line(e)} (run the same command again to resume)") from None
    finally:
        enable_progress_bars()
    snap = hub.snapshot(ref)
    if snap is None:  # pragma: no cover - the files were just written
        raise FetchError(f"{ref.repo}@{ref.revision}: downloaded, but no snapshot in "
                         f"{hub.repo_dir(ref.repo)}")
    return snap
