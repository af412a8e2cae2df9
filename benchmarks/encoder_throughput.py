"""Embedding throughput of fastjax's Flax encoders side by side: EVA-CLIP beside SigLIP.

    python benchmarks/encoder_throughput.py --arch base --images 256 --batch 32 \
        --dtype float32 --json runs/bench/encoders.json

Each encoder gets random weights in its real checkpoint format (EVA-CLIP: timm's
config.json + model.safetensors, written from ``evaclip.param_specs`` without torch;
SigLIP: transformers' ``SiglipVisionModel``, as benchmarks/siglip_throughput.py) and runs
``fastjax.encode.embed`` on the same uint8 images (CIFAR-sized 32 px by default, resized
on the device to the model's resolution and normalised with its mean/std). images/s
exclude the first batch (compile). ``--arch base`` is EVA02-CLIP-B/16 and SigLIP B/16 at
224 px; ``--arch large`` adds nothing for SigLIP and runs EVA02-CLIP-L/14 (FAST-official's
EVA-CLIP); ``--arch tiny`` is a 2-block config for tests. The weights are random:
throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("base", "large", "tiny")


def evaclip_config(arch: str):
    from fastjax.encode import evaclip

    if arch == "tiny":
        return evaclip.EvaClipVisionConfig(img_size=16, patch_size=4, embed_dim=32, depth=2,
                                           num_heads=2, num_classes=16)
    return evaclip.PRESETS["base-patch16-224" if arch == "base" else "large-patch14-224"]


def random_evaclip(cfg, directory: Path, seed: int = 0) -> Path:
    """Random EVA02-CLIP weights under timm's names and shapes, with timm's config.json."""
    from safetensors.numpy import save_file

    from fastjax.encode import evaclip

    rng = np.random.default_rng(seed)
    tensors = {}
    for _, name, shape, _ in evaclip.param_specs(cfg, project=cfg.num_classes > 0):
        scale = "norm" in name and name.endswith(".weight")  # LayerNorm scales start at 1
        value = np.ones(shape) if scale else 0.02 * rng.standard_normal(shape)
        tensors[name] = value.astype(np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    args = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("layer_norm_eps",)}
    (directory / "config.json").write_text(json.dumps(
        {"architecture": f"eva02_{'large_patch14' if cfg.embed_dim == 1024 else 'base_patch16'}"
                         f"_clip_224", "num_classes": cfg.num_classes,
         "model_args": args}))
    return directory


def fastjax_rate(name: str, checkpoint: Path, images: np.ndarray, batch: int, dtype: str,
                 attention=None) -> dict:
    from fastjax.encode import embed, load_encoder

    enc = load_encoder(name, checkpoint=checkpoint, dtype=dtype, attention=attention)
    _, stats = embed(enc, images, batch_size=batch, dtype=dtype, progress=False, return_stats=True)
    return {"images_per_sec": stats["images_per_sec"], "dim": enc.dim, "image_size": enc.image_size,
            "first_batch_seconds": stats["first_batch_seconds"], "seconds": stats["seconds"]}


def run(arch: str, n_images: int, batch: int, dtype: str, image_px: int = 32, attention=None,
        encoders=("evaclip", "siglip")) -> dict:
    """{"fastjax": EVA-CLIP's rates, "siglip": SigLIP's (when asked and arch has one),
    "evaclip_vs_siglip": the ratio of their images/s}."""
    from benchmarks import siglip_throughput as st

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, image_px, image_px, 3), dtype=np.uint8)
    out = {"arch": arch, "images": n_images, "image_px": image_px, "batch": batch, "dtype": dtype,
           "attention": attention}
    with tempfile.TemporaryDirectory() as tmp:
        if "evaclip" in encoders:
            path = random_evaclip(evaclip_config(arch), Path(tmp) / "evaclip")
            out["fastjax"] = fastjax_rate("evaclip", path, images, batch, dtype, attention)
        if "siglip" in encoders and arch != "large":
            st.random_hf_siglip(st.TINY if arch == "tiny" else st.BASE_224, Path(tmp) / "siglip")
            out["siglip"] = fastjax_rate("siglip", Path(tmp) / "siglip", images, batch, dtype,
                                         attention)
    if "fastjax" in out and "siglip" in out:
        out["evaclip_vs_siglip"] = out["fastjax"]["images_per_sec"] / out["siglip"]["images_per_sec"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="base", choices=ARCHS)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--attention", default=None, choices=("xla", "cudnn"))
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks import common

    out = {"device": common.device_info(),
           **run(args.arch, args.images, args.batch, args.dtype,
                 image_px=8 if args.arch == "tiny" else 32, attention=args.attention)}
    common.write_json(args.json, out)
    line = f"EVA-CLIP {args.arch}: {out['fastjax']['images_per_sec']:.1f} images/s"
    if "siglip" in out:
        line += (f", SigLIP: {out['siglip']['images_per_sec']:.1f} images/s "
                 f"(EVA-CLIP / SigLIP {out['evaclip_vs_siglip']:.2f})")
    print(line)


if __name__ == "__main__":
    main()
