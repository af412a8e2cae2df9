"""Shared fixtures: a tiny learnable image-folder dataset written in the real format."""

import numpy as np
import pytest


def write_image_folder(root, n_train=240, n_test=80, classes=4, size=16, seed=0):
    """<root>/{train,test}/<class>/*.png: class c is a bright square in quadrant c
    (plus noise), so a small CNN learns it in a few steps."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    half = size // 2
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            c = i % classes
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            r0, c0 = (c // 2) * half, (c % 2) * half
            img[r0:r0 + half, c0:c0 + half] += np.uint8(150)
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    """Many tests compile the same programs (a CNN-4 round, the pool scoring) in new
    closures; XLA's persistent cache, in this session's own temporary directory, turns
    the repeats into disk hits. Compile counts of the in-memory jit caches are unchanged.
    FASTJAX_TEST_COMPILATION_CACHE=off runs without it."""
    import os

    if os.environ.get("FASTJAX_TEST_COMPILATION_CACHE", "").lower() == "off":
        yield
        return
    import jax

    old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("tinyfolder"))


def set_options(config, **over):
    """Test configs: `section__key=value` (or `key=value` at the top) onto a ConfigDict."""
    for k, v in over.items():
        if "__" in k:
            sect, key = k.split("__")
            setattr(getattr(config, sect), key, v)
        else:
            setattr(config, k, v)
    return config


def final_checkpoint(workdir):
    """The work directory's latest checkpoint, as saved (numpy arrays)."""
    from fastjax.federate.checkpoints import Checkpoints

    store = Checkpoints(workdir / "checkpoints")
    try:
        return store.read(store.latest())
    finally:
        store.close()
