"""Embed a whole dataset with a frozen encoder, streaming batches, with an on-disk cache.

A cache entry is a ``.npy`` (the embeddings) and a ``.json`` (what they depend on, and
the sha256 of the array), each written to a temporary file and renamed into place, so a
killed run leaves no torn entry; an entry that is damaged anyway (unreadable, or an array
whose bytes no longer match its digest) is a miss, recomputed and rewritten. An unwritable cache
directory is found before any embedding is computed: the run goes on uncached.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fastjax.encode import core
from fastjax.files import atomic_write as _replace_atomically
from fastjax.files import unwritable

CACHE_VERSION = 1


def cache_metadata(encoder: core.Encoder, images: np.ndarray, dtype: str,
                   cache_key: dict) -> dict:
    """Everything an embedding depends on; its hash names the cache files."""
    # First/last image bytes: a cheap guard against a reused dataset name.
    probe = hashlib.sha256(images[:1].tobytes() + images[-1:].tobytes()).hexdigest()[:16]
    return {
        "version": CACHE_VERSION,
        "encoder": encoder.name, "variant": encoder.variant, "digest": encoder.digest,
        "note": encoder.note, "image_size": encoder.image_size,
        "mean": list(encoder.mean), "std": list(encoder.std), "dtype": dtype,
        "n": int(images.shape[0]), "image_shape": list(images.shape[1:]), "probe": probe,
        **{f"key.{k}": v for k, v in sorted(cache_key.items())},
    }


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _embed_batch(apply, image_size, mean, std, compute_dtype, params, batch):
    # Static args are small values (not params), so repeated embed calls with the same
    # encoder reuse one compiled function.
    x = core.preprocess_images(batch, image_size, mean, std).astype(compute_dtype)
    return apply(params, x).astype(jnp.float32)


def _cache_paths(cache_dir, meta):
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stem = Path(cache_dir) / f"{meta['encoder']}-{h}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def _read_entry(paths, meta: dict, shape: tuple) -> np.ndarray | None:
    """The cached embeddings, or None on a miss. A damaged entry is a miss (with a
    warning naming it): it is recomputed and rewritten."""
    npy, js = paths
    if not (npy.is_file() and js.is_file()):
        return None
    try:
        with open(js) as f:
            stored = json.load(f)
        if not isinstance(stored, dict):
            raise ValueError(f"{js.name} holds a {type(stored).__name__}, not an object")
        if stored.get("meta") != json.loads(json.dumps(meta, default=str)):
            return None
        out = np.load(npy, allow_pickle=False)
        # Bytes flipped inside the array still load, as other numbers: check the content.
        if stored.get("sha256") != _digest(out):
            raise ValueError("its array differs from the sha256 in its metadata"
                             if "sha256" in stored else "it has no content digest (an older entry)")
    except (OSError, ValueError, EOFError) as e:  # json's decode error is a ValueError
        warnings.warn(f"ignoring a damaged embedding cache entry {npy} / {js.name} "
                      f"({type(e).__name__}: {e}); recomputing it", stacklevel=3)
        return None
    return out if out.shape == shape else None


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _write_entry(paths, out: np.ndarray, meta: dict, stats: dict) -> None:
    npy, js = paths
    record = json.dumps({"meta": meta, "shape": list(out.shape), "sha256": _digest(out),
                         "images_per_sec": stats["images_per_sec"]}, indent=1, default=str)
    # The .json goes last: an entry counts only once its metadata matches.
    _replace_atomically(npy, lambda f: np.save(f, out))
    _replace_atomically(js, lambda f: f.write(record.encode()))


def embed(encoder: core.Encoder, images_uint8: np.ndarray, *, batch_size: int = 256,
          dtype: str | None = None, cache_dir=None, cache_key: dict | None = None,
          progress: bool = True, return_stats: bool = False):
    """Embed uint8 NHWC images -> float32 (N, encoder.dim).

    Preprocessing (resize, normalise) runs inside the same jitted function as the
    encoder, one batch at a time, so no resized copy of the dataset is ever held. The last
    batch is zero-padded to ``batch_size``: one compile per call. ``dtype="bfloat16"``
    casts params and inputs (for accelerators; on CPU it is usually slower).

    With ``cache_dir``, ``cache_key`` (e.g. ``{"dataset": "cifar10", "split": "train"}``)
    is required; the result is stored as ``.npy`` + ``.json`` keyed by encoder name,
    checkpoint digest, preprocessing, dtype, N and ``cache_key``, and a later call with
    the same key loads it without running the encoder. A damaged entry is recomputed;
    an unwritable ``cache_dir`` gives a warning before any work and no cache.

    With ``return_stats``, returns ``(embeddings, stats)``; stats has ``images_per_sec``
    (steady state, first compiled batch excluded when there are several), ``seconds``,
    ``first_batch_seconds`` (includes the compile) and ``cached``.
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"embed: expected uint8 (N, H, W, C) images, got {images.dtype} "
                         f"{images.shape}")
    dtype = dtype or encoder.dtype
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"embed: dtype={dtype!r}; allowed: 'float32', 'bfloat16'")
    n = images.shape[0]

    paths = None
    if cache_dir is not None:
        if not cache_key:
            raise ValueError("embed: cache_dir given without cache_key; pass e.g. "
                             "cache_key={'dataset': 'cifar10', 'split': 'train'}")
        meta = cache_metadata(encoder, images, dtype, cache_key)
        paths = _cache_paths(cache_dir, meta)
        out = _read_entry(paths, meta, (n, encoder.dim))
        if out is not None:
            stats = {"cached": True, "images_per_sec": None, "seconds": 0.0,
                     "first_batch_seconds": 0.0, "path": str(paths[0])}
            return (out, stats) if return_stats else out
        why = unwritable(cache_dir)
        if why is not None:  # found now, not after every embedding is computed
            warnings.warn(f"embedding cache directory {cache_dir} is not writable ({why}); "
                          f"embedding without a cache (set the config key "
                          f"`encoder.cache_dir` to a writable directory)", stacklevel=2)
            paths = None

    out = np.empty((n, encoder.dim), np.float32)
    stats = {"cached": False, "images_per_sec": 0.0, "seconds": 0.0, "first_batch_seconds": 0.0}
    if n == 0:
        return (out, stats) if return_stats else out
    bs = min(batch_size, n)
    params = core.cast_floating(encoder.params, jnp.dtype(dtype))
    step = functools.partial(_embed_batch, encoder.apply, encoder.image_size,
                             tuple(encoder.mean), tuple(encoder.std), dtype)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="img", unit_scale=True, desc=f"embed[{encoder.name}]")
        # Said before the work starts: on a CPU this can take hours.
        bar.write(f"embedding {n} images with {encoder.name} at {encoder.image_size} px "
                  f"in batches of {bs}; an estimate follows the first batch")
    t0 = time.perf_counter()
    t_first = None
    pending = None  # (start, count, device result): fetch one batch behind dispatch
    for start in range(0, n, bs):
        batch = images[start:start + bs]
        count = batch.shape[0]
        if count < bs:
            batch = np.concatenate([batch, np.zeros((bs - count,) + batch.shape[1:], np.uint8)])
        result = step(params, batch)
        if pending is not None:
            s, c, r = pending
            out[s:s + c] = np.asarray(r)[:c]
            if bar is not None:
                bar.update(c)
        if t_first is None:
            jax.block_until_ready(result)
            t_first = time.perf_counter()
            if bar is not None and n > bs:  # compile included: an upper bound
                bar.write(f"first batch of {bs} in {t_first - t0:.1f} s (compile included): at most "
                          f"about {(t_first - t0) * n / bs / 60:.1f} min for all {n} images")
        pending = (start, count, result)
    s, c, r = pending
    out[s:s + c] = np.asarray(r)[:c]
    t_end = time.perf_counter()
    if bar is not None:
        bar.update(c)
        bar.close()
    stats["seconds"] = t_end - t0
    stats["first_batch_seconds"] = t_first - t0
    steady = n - bs
    stats["images_per_sec"] = (steady / (t_end - t_first) if steady > 0 and t_end > t_first
                               else n / (t_end - t0))

    if paths is not None:
        try:
            _write_entry(paths, out, meta, stats)
            stats["path"] = str(paths[0])
        except OSError as e:  # e.g. a full disk: the embeddings are still good
            warnings.warn(f"could not write the embedding cache entry {paths[0]} "
                          f"({type(e).__name__}: {e}); continuing without it", stacklevel=2)
    return (out, stats) if return_stats else out
