"""SigLIP embedding throughput: fastjax's Flax SigLIP against transformers' PyTorch
`SiglipVisionModel` (SDPA attention), same random weights in the HF format.

    python benchmarks/siglip_throughput.py --images 16384 --batch 256 --dtype bfloat16 \
        --json runs/bench/siglip.json

Both sides start from uint8 NHWC images on the host (CIFAR-sized 32 px by default) and
resize to the model's resolution on the device (bilinear, half-pixel centres: jax.image.resize
and torch's interpolate(align_corners=False) agree when upsampling, which is why the
tiny test config starts from 8 px), normalise with
mean = std = 0.5, and return float32 pooled embeddings on the host. fastjax runs
`fastjax.encode.embed` (preprocessing fused into the jitted encoder); images/s exclude the
first batch (compile / autotuning) on both sides. `--attention` picks
`jax.nn.dot_product_attention`'s implementation for fastjax (None, xla, cudnn).
The weights are random (no checkpoint download here): throughput does not depend on them.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASE_224 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                patch_size=16, image_size=224)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            patch_size=4, image_size=16)


def random_hf_siglip(arch: dict, directory: Path, seed: int = 0):
    """A randomly initialised transformers SiglipVisionModel, saved as config.json +
    model.safetensors in `directory` (the layout `fastjax.encode.load_encoder` reads)."""
    import torch
    from safetensors.torch import save_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(**arch)
    try:
        cfg._attn_implementation = "sdpa"
    except Exception:  # older/newer config classes guard this attribute; SDPA is the default then
        pass
    model = SiglipVisionModel(cfg).eval()
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    cfg.to_json_file(str(directory / "config.json"))
    return model


def fastjax_rate(checkpoint: Path, images: np.ndarray, batch: int, dtype: str, attention=None) -> dict:
    from fastjax.encode import embed, load_encoder

    enc = load_encoder("siglip", checkpoint=checkpoint, dtype=dtype, attention=attention)
    z, stats = embed(enc, images, batch_size=batch, dtype=dtype, progress=False, return_stats=True)
    return {"images_per_sec": stats["images_per_sec"], "first_batch_seconds": stats["first_batch_seconds"],
            "seconds": stats["seconds"], "attention": attention, "embeddings": z}


def torch_rate(model, images: np.ndarray, batch: int, dtype: str, device: str = "auto",
               compile: bool = False) -> dict:
    import torch
    import torch.nn.functional as F

    from benchmarks.torch_reference import resolve_device

    dev = resolve_device(device)
    tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model = model.to(dev, tdt).eval()
    size = model.config.image_size
    fwd = torch.compile(model) if compile else model

    def step(xb):
        x = torch.from_numpy(xb).to(dev, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        return fwd(pixel_values=((x - 0.5) / 0.5).to(tdt)).pooler_output

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    n = len(images)
    outs = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        first = None
        for s in range(0, n, batch):
            xb = images[s:s + batch]
            if len(xb) < batch:  # a full last batch, as embed pads it
                xb = np.concatenate([xb, np.zeros((batch - len(xb),) + xb.shape[1:], xb.dtype)])
            outs.append(step(xb))
            if first is None:
                sync()
                first = time.perf_counter()
        z = torch.cat(outs)[:n].float().cpu().numpy()
        end = time.perf_counter()
    steady = n - batch
    rate = steady / (end - first) if steady > 0 and end > first else n / (end - t0)
    return {"images_per_sec": rate, "first_batch_seconds": first - t0, "seconds": end - t0, "device": str(dev),
            "compiled": compile, "embeddings": z}


def run(arch: dict, n_images: int, batch: int, dtype: str, image_px: int = 32, attention=None,
        torch_compile: bool = False) -> dict:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, image_px, image_px, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        model = random_hf_siglip(arch, Path(tmp) / "siglip")
        ours = fastjax_rate(Path(tmp) / "siglip", images, batch, dtype, attention)
    peer = torch_rate(model, images, batch, dtype)
    rows = []
    if torch_compile:
        try:
            rows.append(("torch_compiled", torch_rate(model, images, batch, dtype, compile=True)))
        except Exception as e:  # inductor needs a toolchain; report, do not fail the suite
            rows.append(("torch_compiled", {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}))
    a, b = ours.pop("embeddings"), peer.pop("embeddings")
    out = {"arch": arch, "images": n_images, "image_px": image_px, "batch": batch, "dtype": dtype,
           "fastjax": ours, "torch": peer,
           "max_abs_diff_relative": float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)),
           "ratio_vs_torch": ours["images_per_sec"] / peer["images_per_sec"]}
    for name, r in rows:
        r.pop("embeddings", None)
        out[name] = r
    return out


def main(argv=None):
    sys.path.insert(0, str(ROOT))
    from benchmarks import common

    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=16384)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--attention", default=None, choices=("xla", "cudnn"))
    p.add_argument("--tiny", action="store_true", help="a tiny random config (for tests)")
    p.add_argument("--torch-compile", action="store_true")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    print(common.device_line(), flush=True)

    out = {"device": common.device_info(),
           **run(TINY if args.tiny else BASE_224, args.images, args.batch, args.dtype,
                 image_px=8 if args.tiny else 32, attention=args.attention, torch_compile=args.torch_compile)}
    common.write_json(args.json, out)
    print(f"fastjax {out['fastjax']['images_per_sec']:.0f} images/s, torch {out['torch']['images_per_sec']:.0f} "
          f"images/s, ratio {out['ratio_vs_torch']:.2f}, max |diff| / max |z| {out['max_abs_diff_relative']:.3g}")


if __name__ == "__main__":
    main()
