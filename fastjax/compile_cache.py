"""JAX's persistent compilation cache: compiled XLA programs kept on disk, so a second
run of the same job (or a resumed one) skips the compiles of the first.

The CLI (`python -m fastjax.main`) turns it on; library calls leave JAX's setting alone.
Opt out with the config key `compilation_cache_dir="off"` or the environment variable
FASTJAX_COMPILATION_CACHE=off (the variable may also name another directory).

    >>> enable("off") is None
    True
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "FASTJAX_COMPILATION_CACHE"
DEFAULT_DIR = Path("~/.cache/fastjax/xla")
_OFF = ("off", "0", "false", "no", "none")
MIN_COMPILE_SECONDS = 0.5  # programs that compile faster than this are not worth a file


def resolve(directory: str = "") -> Path | None:
    """Where the cache lives: the environment variable wins, then `directory`
    (the config value; "" means the default ~/.cache/fastjax/xla); None when off."""
    choice = os.environ.get(ENV, directory or "").strip()
    if choice.lower() in _OFF:
        return None
    return Path(choice or DEFAULT_DIR).expanduser()


def enable(directory: str = "", *, min_compile_seconds: float | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at `resolve(directory)`, keeping programs
    that took at least `min_compile_seconds` (default MIN_COMPILE_SECONDS) to compile; returns the directory, or None
    (and changes nothing) when the cache is turned off."""
    path = resolve(directory)
    if path is None:
        return None
    import jax

    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      MIN_COMPILE_SECONDS if min_compile_seconds is None else min_compile_seconds)
    return path
