"""EVA-CLIP vision tower (EVA02-CLIP; Sun et al. 2023) in Flax linen, loading timm weights.

The paper's best encoder in Table V ("Eva-CLIP"). The architecture is EVA-02's ViT as timm
implements it (``timm.models.eva.Eva`` built by ``eva02_base_patch16_clip_224`` /
``eva02_large_patch14_clip_224``; open_clip's ``EVA02-B-16`` / ``EVA02-L-14`` use that timm
model as their vision tower): a patchify conv, a class token and learned absolute position
embeddings, then pre-LN blocks whose attention has separate q/k/v projections (no bias on k),
2-D rotary position embeddings on the patch tokens (interleaved pairs, axial h/w bands, grid
rescaled to the 16 x 16 pre-training grid) and a sub-LayerNorm before the output projection,
and a SwiGLU MLP (hidden = int(8/3 * width)) with its own sub-LayerNorm before ``fc2``; a
final LayerNorm, the class token, and the linear ``head`` that projects it into CLIP's joint
space. ``output="image_embeds"`` (default) returns that projection, which is what open_clip's
``encode_image`` returns; ``output="pooler_output"`` the normalised class token before it.

Which checkpoint. FAST-official (Haoyuan-L/FAST-official) embeds with open_clip:
``create_model_and_transforms('EVA02-L-14', 'merged2b_s4b_b131k')`` in ``ablation/data.py``
(encoder "EvaCLIP", beside ViT-B-16-SigLIP-512, RN50, ViT-B-16 and DINOv2 ViT-B/14: the five
encoders of Table V) and in ``src/data.py``. Its first encoder switch (2024-10) used
``EVA02-B-16`` / ``merged2b_s8b_b131k``; the commit that added RN50 (2025-01, so Table V's
five columns) replaced it by EVA02-L-14. Hence the default variant ``large-patch14-224``
(EVA02-CLIP-L/14, 224 px, 768-d embeddings); ``base-patch16-224`` (EVA02-CLIP-B/16, 512-d,
the size class of the SigLIP B/16 default) is the other preset.

Weights: timm's hub format, the format of the reference implementation: ``config.json``
(``architecture``, ``num_classes``, ``model_args``) + ``model.safetensors`` with timm's
names, as in ``timm/eva02_large_patch14_clip_224.merged2b`` and
``timm/eva02_base_patch16_clip_224.merged2b`` (timm's pretrained configs for these models).
open_clip's layout is read too: ``open_clip_model.safetensors`` (the whole CLIP model,
vision keys under ``visual.trunk.``, float16) + ``open_clip_config.json``, as in open_clip's
``timm/eva02_*_clip_224.merged2b_s*b_b131k`` repositories; the text tower is ignored.
Without a config file the named preset supplies the sizes. Preprocessing: OpenAI CLIP's
mean/std (``core.CLIP_MEAN``/``CLIP_STD``), resized to the checkpoint's 224 px.

Parity (tests/test_evaclip.py): against timm 1.0.31's ``Eva`` with random weights saved by
timm's own ``save_for_hf``, float32 on CPU: max abs difference 7e-7 on a 2-block config
(outputs up to 3.7), 4e-5 on the full B/16 shape read from the open_clip float16 layout
(outputs up to 17; timm's own float32 output is 2e-5 from its float64 run there).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from fastjax.encode import core


@dataclasses.dataclass(frozen=True)
class EvaClipVisionConfig:
    """The sizes of an EVA02-CLIP vision tower (timm ``Eva`` argument names)."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4 * 2 / 3
    num_classes: int = 512  # the CLIP projection's width; 0: no head
    ref_feat_shape: tuple[int, int] = (16, 16)  # rotary grid of pre-training (224 / 14)
    rope_temperature: float = 10000.0
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        if self.img_size % self.patch_size or self.embed_dim % self.num_heads or self.head_dim % 4:
            raise ValueError(f"evaclip: img_size {self.img_size} must be a multiple of patch_size "
                             f"{self.patch_size}, and embed_dim {self.embed_dim} of 4 * num_heads "
                             f"{self.num_heads} (two rotary axes of sin/cos pairs per head)")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)  # as timm: int(), not round()

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


PRESETS = {
    "base-patch16-224": EvaClipVisionConfig(),
    "large-patch14-224": EvaClipVisionConfig(patch_size=14, embed_dim=1024, depth=24,
                                             num_heads=16, num_classes=768),
}
DEFAULT_VARIANT = "large-patch14-224"  # FAST-official's EVA02-L-14 (see the module docstring)
ARCHITECTURES = {"eva02_base_patch16_clip_224": "base-patch16-224",
                 "eva02_large_patch14_clip_224": "large-patch14-224"}
OUTPUTS = ("image_embeds", "pooler_output")
ATTENTION_IMPLS = (None, "xla", "cudnn")
WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors")
# timm model_args this port reads, and those that must keep EVA02-CLIP's own value.
_SIZE_ARGS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
              "num_classes", "ref_feat_shape", "rope_temperature")
_FIXED_ARGS = {"in_chans": 3, "global_pool": "token"}


def config_from_timm(d: dict) -> EvaClipVisionConfig:
    """timm's hub ``config.json`` -> config: the architecture's preset, then its model_args."""
    arch = d.get("architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"evaclip: config.json architecture {arch!r} is not an EVA02-CLIP "
                         f"vision tower (allowed: {sorted(ARCHITECTURES)})")
    args = dict(d.get("model_args") or {})
    for k in ("num_classes", "global_pool"):
        if k in d:
            args.setdefault(k, d[k])
    unknown = sorted(set(args) - set(_SIZE_ARGS) - set(_FIXED_ARGS))
    wrong = sorted(k for k, v in _FIXED_ARGS.items() if k in args and args[k] != v)
    if unknown or wrong:
        raise ValueError(f"evaclip: config.json model_args {unknown + wrong} change the EVA02-CLIP "
                         f"structure this port implements (it reads {list(_SIZE_ARGS)}; "
                         f"fixed: {_FIXED_ARGS})")
    sizes = {k: args[k] for k in _SIZE_ARGS if k in args}
    for k in ("img_size", "patch_size", "ref_feat_shape"):
        v = sizes.get(k)
        if isinstance(v, (list, tuple)):
            if k != "ref_feat_shape" and len(set(v)) != 1:
                raise ValueError(f"evaclip: non-square {k}={v} is not supported")
            sizes[k] = tuple(v) if k == "ref_feat_shape" else int(v[0])
        elif k == "ref_feat_shape" and v is not None:
            sizes[k] = (int(v), int(v))
    return dataclasses.replace(PRESETS[ARCHITECTURES[arch]], **sizes)


def config_from_open_clip(d: dict) -> EvaClipVisionConfig:
    """open_clip's ``open_clip_config.json`` -> config (timm tower, head = the projection)."""
    cfg = d.get("model_cfg", d)
    vision = cfg.get("vision_cfg", {})
    if vision.get("timm_proj") not in (None, "none"):
        raise ValueError(f"evaclip: open_clip timm_proj={vision['timm_proj']!r} adds a projection "
                         f"this port does not implement")
    args = {"global_pool": vision.get("timm_pool", "avg")}  # open_clip's default pool
    if vision.get("timm_proj") == "none":
        args["num_classes"] = 0  # open_clip then passes the trunk's features through
    elif "embed_dim" in cfg:
        args["num_classes"] = cfg["embed_dim"]  # the trunk's head is the CLIP projection
    if "image_size" in vision:
        args["img_size"] = vision["image_size"]
    return config_from_timm({"architecture": vision.get("timm_model_name"), "model_args": args})


def rope_tables(cfg: EvaClipVisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos), each (grid**2, head_dim) float32: timm's ``RotaryEmbeddingCat`` for a
    square grid (in_pixels=False, 'ij' indexing, interleaved layout).

    Per axis, head_dim // 4 inverse frequencies temperature ** (-j / (head_dim // 4)); row and
    column indices are rescaled to ``ref_feat_shape``; the row bands come first, then the
    column bands, and each angle fills two adjacent channels (a rotated pair).
    """
    n_bands = cfg.head_dim // 4
    bands = 1.0 / cfg.rope_temperature ** (np.arange(n_bands, dtype=np.float64) / n_bands)
    g = cfg.grid
    rows = np.arange(g) / g * cfg.ref_feat_shape[0]
    cols = np.arange(g) / g * cfg.ref_feat_shape[1]
    yy, xx = np.meshgrid(rows, cols, indexing="ij")
    angles = np.concatenate([yy.reshape(-1, 1) * bands, xx.reshape(-1, 1) * bands], axis=1)
    angles = np.repeat(angles, 2, axis=1)
    return np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)


def _modules(attention: str | None = None):
    """The Flax modules; `attention` is `jax.nn.dot_product_attention`'s implementation."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    def rotate(t, sin, cos):
        # t: (B, N, heads, head_dim); the class token (first) keeps no rotary position.
        pairs = t[:, 1:].astype(jnp.float32)
        swapped = jnp.stack([-pairs[..., 1::2], pairs[..., ::2]], axis=-1).reshape(pairs.shape)
        rotated = pairs * cos[:, None, :] + swapped * sin[:, None, :]
        return jnp.concatenate([t[:, :1], rotated.astype(t.dtype)], axis=1)

    class Attention(nn.Module):
        cfg: EvaClipVisionConfig

        @nn.compact
        def __call__(self, x, sin, cos):
            c = self.cfg
            b, n, d = x.shape
            heads = lambda t: t.reshape(b, n, c.num_heads, c.head_dim)  # noqa: E731
            q = rotate(heads(nn.Dense(d, name="q_proj")(x)), sin, cos)
            k = rotate(heads(nn.Dense(d, use_bias=False, name="k_proj")(x)), sin, cos)
            v = heads(nn.Dense(d, name="v_proj")(x))
            out = jax.nn.dot_product_attention(q, k, v, implementation=attention).reshape(b, n, d)
            out = nn.LayerNorm(c.layer_norm_eps, name="norm")(out)  # sub-LN before the projection
            return nn.Dense(d, name="proj")(out)

    class SwiGLU(nn.Module):
        cfg: EvaClipVisionConfig

        @nn.compact
        def __call__(self, x):
            c = self.cfg
            gate = nn.Dense(c.mlp_hidden, name="fc1_g")(x)
            h = jax.nn.silu(gate) * nn.Dense(c.mlp_hidden, name="fc1_x")(x)
            h = nn.LayerNorm(c.layer_norm_eps, name="norm")(h)  # sub-LN before fc2
            return nn.Dense(c.embed_dim, name="fc2")(h)

    class Block(nn.Module):
        cfg: EvaClipVisionConfig

        @nn.compact
        def __call__(self, x, sin, cos):
            eps = self.cfg.layer_norm_eps
            x = x + Attention(self.cfg, name="attn")(nn.LayerNorm(eps, name="norm1")(x), sin, cos)
            return x + SwiGLU(self.cfg, name="mlp")(nn.LayerNorm(eps, name="norm2")(x))

    class EvaClipVision(nn.Module):
        """NHWC images normalised with CLIP's mean/std -> (B, num_classes) if `project`,
        else the normalised class token (B, embed_dim)."""

        cfg: EvaClipVisionConfig
        project: bool = True

        @nn.compact
        def __call__(self, images):
            c = self.cfg
            x = nn.Conv(c.embed_dim, (c.patch_size, c.patch_size), strides=c.patch_size,
                        padding="VALID", name="patch_embed")(images)
            x = x.reshape(x.shape[0], -1, c.embed_dim)  # row-major patches, as torch flatten(2)
            cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, c.embed_dim))
            pos = self.param("pos_embed", nn.initializers.normal(0.02),
                             (1, c.grid ** 2 + 1, c.embed_dim))
            cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, c.embed_dim))
            x = jnp.concatenate([cls, x], axis=1) + pos.astype(x.dtype)
            sin, cos = (jnp.asarray(t) for t in rope_tables(c))
            for i in range(c.depth):
                x = Block(c, name=f"blocks_{i}")(x, sin, cos)
            x = nn.LayerNorm(c.layer_norm_eps, name="norm")(x)[:, 0]
            return nn.Dense(c.num_classes, name="head")(x) if self.project else x

    return EvaClipVision


def vision_keys(sd: dict) -> tuple[dict, str]:
    """The vision tower's tensors under timm's names, and the prefix they had.

    open_clip checkpoints hold the whole CLIP model with the tower under ``visual.trunk.``
    (everything outside ``visual.`` is the text side and is ignored); timm's own have no
    prefix. Rotary tables (``rope.*``) are computed, not learned, and are skipped.
    """
    prefix = "visual.trunk." if any(k.startswith("visual.trunk.") for k in sd) else ""
    out = {}
    for k, v in sd.items():
        if prefix and not k.startswith("visual."):
            continue
        name = k[len(prefix):] if k.startswith(prefix) else k  # other visual.* keys: unexpected
        if not name.startswith("rope."):
            out[name] = v
    return out, prefix


def _original(name: str, prefix: str) -> str:
    return name if name.startswith("visual.") else prefix + name


def param_specs(cfg: EvaClipVisionConfig, project: bool):
    """(flax path, timm name, timm shape, timm -> flax) for every parameter of the tower."""
    d, h, p = cfg.embed_dim, cfg.mlp_hidden, cfg.patch_size

    def linear(path, name, din, dout, bias=True):
        return ([(path + ("kernel",), f"{name}.weight", (dout, din), np.transpose)]
                + ([(path + ("bias",), f"{name}.bias", (dout,), None)] if bias else []))

    def layer_norm(path, name, dim):
        return [(path + ("scale",), f"{name}.weight", (dim,), None),
                (path + ("bias",), f"{name}.bias", (dim,), None)]

    specs = [(("cls_token",), "cls_token", (1, 1, d), None),
             (("pos_embed",), "pos_embed", (1, cfg.grid ** 2 + 1, d), None),
             (("patch_embed", "kernel"), "patch_embed.proj.weight", (d, 3, p, p),
              lambda a: a.transpose(2, 3, 1, 0)),
             (("patch_embed", "bias"), "patch_embed.proj.bias", (d,), None)]
    for i in range(cfg.depth):
        src, dst = f"blocks.{i}", (f"blocks_{i}",)
        specs += layer_norm(dst + ("norm1",), f"{src}.norm1", d)
        specs += linear(dst + ("attn", "q_proj"), f"{src}.attn.q_proj", d, d)
        specs += linear(dst + ("attn", "k_proj"), f"{src}.attn.k_proj", d, d, bias=False)
        specs += linear(dst + ("attn", "v_proj"), f"{src}.attn.v_proj", d, d)
        specs += layer_norm(dst + ("attn", "norm"), f"{src}.attn.norm", d)
        specs += linear(dst + ("attn", "proj"), f"{src}.attn.proj", d, d)
        specs += layer_norm(dst + ("norm2",), f"{src}.norm2", d)
        specs += linear(dst + ("mlp", "fc1_g"), f"{src}.mlp.fc1_g", d, h)
        specs += linear(dst + ("mlp", "fc1_x"), f"{src}.mlp.fc1_x", d, h)
        specs += layer_norm(dst + ("mlp", "norm"), f"{src}.mlp.norm", h)
        specs += linear(dst + ("mlp", "fc2"), f"{src}.mlp.fc2", h, d)
    specs += layer_norm(("norm",), "norm", d)
    if project:
        specs += linear(("head",), "head", d, cfg.num_classes)
    return specs


def convert_state_dict(sd: dict[str, np.ndarray], cfg: EvaClipVisionConfig,
                       project: bool = True) -> dict:
    """timm / open_clip EVA02-CLIP state dict (numpy) -> Flax params, every key mapped.

    Missing keys, wrong shapes and leftover vision keys raise one ``ValueError`` listing
    them all; float16 / bfloat16 tensors are widened to float32. ``project=False`` leaves
    the head out (its tensors are then accepted and unused).
    """
    vision, prefix = vision_keys(sd)
    if project and cfg.num_classes <= 0:
        raise ValueError("evaclip: output='image_embeds' needs a projection head, and this "
                         "config has num_classes=0; use output='pooler_output'")
    params: dict = {}
    used = set() if project else {k for k in vision if k.startswith("head.")}
    problems: list[str] = []
    for path, name, shape, to_flax in param_specs(cfg, project):
        if name not in vision:
            problems.append(f"missing parameter {prefix}{name} (expected shape {shape})")
            continue
        used.add(name)
        value = np.asarray(vision[name], np.float32)
        if value.shape != shape:
            problems.append(f"parameter {prefix}{name}: checkpoint shape {value.shape}, "
                            f"model expects {shape}")
            continue
        node = params
        for step in path[:-1]:
            node = node.setdefault(step, {})
        node[path[-1]] = to_flax(value) if to_flax else value
    problems += [f"unexpected parameter {_original(k, prefix)} (shape {tuple(np.shape(vision[k]))})"
                 for k in sorted(set(vision) - used)]
    if problems:
        raise ValueError("evaclip: checkpoint does not match the model (timm / open_clip "
                         "EVA02-CLIP names expected):\n  " + "\n  ".join(problems))
    return params


def _accept(path: Path):
    if path.is_file() and path.name.endswith(".safetensors"):
        return path
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
    return None


def locate(checkpoint=None, variant=None) -> Path:
    """The weights file `load` would read (nothing is read); fails as `load` does."""
    if variant is not None and variant not in PRESETS:
        raise ValueError(f"evaclip: unknown variant {variant!r} (allowed: {sorted(PRESETS)})")
    return core.find_checkpoint("evaclip", checkpoint, variant or DEFAULT_VARIANT, _accept)


def read_config(weights: Path, variant: str | None) -> tuple[EvaClipVisionConfig, list[Path]]:
    """timm's config.json beside the weights, else open_clip's, else the variant's preset."""
    readers = (("config.json", config_from_timm), ("open_clip_config.json", config_from_open_clip))
    for name, reader in readers:
        path = weights.parent / name
        if path.is_file():
            try:
                with open(path) as f:
                    d = json.load(f)
            except ValueError as e:
                raise core.unreadable(path, "JSON config", e) from e
            if not isinstance(d, dict):
                raise core.unreadable(path, "JSON config", TypeError("not a JSON object"))
            return reader(d), [path]
    return PRESETS[variant or DEFAULT_VARIANT], []


def load(checkpoint=None, variant=None, dtype="float32", output: str = "image_embeds",
         attention: str | None = None) -> core.Encoder:
    """Load an EVA02-CLIP vision tower from local timm / open_clip weights (no hub access).

    output: "image_embeds" (CLIP projection; open_clip's encode_image) or "pooler_output".
    attention: `jax.nn.dot_product_attention`'s implementation (None, "xla", "cudnn").
    """
    import jax.numpy as jnp

    if output not in OUTPUTS:
        raise ValueError(f"evaclip: output={output!r}; allowed: {OUTPUTS}")
    if attention not in ATTENTION_IMPLS:
        raise ValueError(f"evaclip: attention={attention!r}; allowed: {ATTENTION_IMPLS}")
    weights = locate(checkpoint, variant)
    cfg, cfg_files = read_config(weights, variant)
    project = output == "image_embeds"
    params = convert_state_dict(core.read_safetensors(weights), cfg, project)
    module = _modules(attention)(cfg, project)

    def apply(params, images):
        return module.apply({"params": params}, images)

    return core.Encoder(
        name="evaclip", dim=cfg.num_classes if project else cfg.embed_dim,
        image_size=cfg.img_size, mean=core.CLIP_MEAN, std=core.CLIP_STD,
        params=core.cast_floating(params, jnp.dtype(dtype)), apply=apply,
        digest=core.file_digest([weights] + cfg_files), variant=variant,
        checkpoint=str(weights), dtype=dtype, note=f"output={output}")
