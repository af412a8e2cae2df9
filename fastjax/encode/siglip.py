"""SigLIP vision tower (Zhai et al. 2023) in Flax linen, loading HF ``google/siglip-*``.

FAST's default foundation model. Mirrors transformers' ``SiglipVisionModel``
(``modeling_siglip.py``): patchify conv + learned position embeddings, pre-LN encoder
layers (attention, MLP with gelu_pytorch_tanh), ``post_layernorm``, and the multihead
attention pooling head whose output (``pooler_output``) is the embedding.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from fastjax.encode import core


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    @classmethod
    def from_dict(cls, d: dict) -> "SiglipVisionConfig":
        d = d.get("vision_config", d)  # full SiglipModel configs nest the vision part
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_BASE = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
             num_attention_heads=12, patch_size=16)
_LARGE = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
              num_attention_heads=16, patch_size=16)
_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
               num_attention_heads=16, patch_size=14)

# google/siglip-<variant>; used when a checkpoint directory has no config.json.
PRESETS = {
    **{f"base-patch16-{s}": SiglipVisionConfig(**_BASE, image_size=s) for s in (224, 256, 384, 512)},
    **{f"large-patch16-{s}": SiglipVisionConfig(**_LARGE, image_size=s) for s in (256, 384)},
    "so400m-patch14-224": SiglipVisionConfig(**_SO400M, image_size=224),
    "so400m-patch14-384": SiglipVisionConfig(**_SO400M, image_size=384),
}
DEFAULT_VARIANT = "base-patch16-224"


def _act(name):
    import jax

    acts = {"gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
            "gelu": lambda x: jax.nn.gelu(x, approximate=False),
            "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x)}
    if name not in acts:
        raise ValueError(f"siglip: unsupported hidden_act {name!r} (allowed: {sorted(acts)})")
    return acts[name]


ATTENTION_IMPLS = (None, "xla", "cudnn")


def _modules(attention: str | None = None):
    """The Flax modules; `attention` is `jax.nn.dot_product_attention`'s implementation
    (None: JAX's choice; "cudnn": cuDNN's fused flash attention, GPU and bf16 only)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class MLP(nn.Module):
        cfg: SiglipVisionConfig

        @nn.compact
        def __call__(self, x):
            x = nn.Dense(self.cfg.intermediate_size, name="fc1")(x)
            return nn.Dense(self.cfg.hidden_size, name="fc2")(_act(self.cfg.hidden_act)(x))

    def attend(q, k, v, heads):
        # Scaled dot-product attention, softmax in float32, scale 1/sqrt(head_dim).
        b, lq, d = q.shape
        split = lambda t: t.reshape(b, t.shape[1], heads, d // heads)  # noqa: E731
        out = jax.nn.dot_product_attention(split(q), split(k), split(v), implementation=attention)
        return out.reshape(b, lq, d)

    class SelfAttention(nn.Module):
        cfg: SiglipVisionConfig

        @nn.compact
        def __call__(self, x):
            d = self.cfg.hidden_size
            q, k, v = (nn.Dense(d, name=n)(x) for n in ("q_proj", "k_proj", "v_proj"))
            return nn.Dense(d, name="out_proj")(attend(q, k, v, self.cfg.num_attention_heads))

    class EncoderLayer(nn.Module):
        cfg: SiglipVisionConfig

        @nn.compact
        def __call__(self, x):
            eps = self.cfg.layer_norm_eps
            x = x + SelfAttention(self.cfg, name="self_attn")(nn.LayerNorm(eps, name="layer_norm1")(x))
            return x + MLP(self.cfg, name="mlp")(nn.LayerNorm(eps, name="layer_norm2")(x))

    class PoolingHead(nn.Module):
        """Multihead attention pooling: one learned probe attends over all tokens."""

        cfg: SiglipVisionConfig

        @nn.compact
        def __call__(self, x):
            d = self.cfg.hidden_size
            probe = self.param("probe", nn.initializers.normal(1.0), (1, 1, d))
            # torch.nn.MultiheadAttention: packed q/k/v projection + out_proj.
            w_in = self.param("in_proj_kernel", nn.initializers.lecun_normal(), (d, 3 * d))
            b_in = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
            w_in, b_in = w_in.astype(x.dtype), b_in.astype(x.dtype)
            probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, d))
            q = probe @ w_in[:, :d] + b_in[:d]
            k = x @ w_in[:, d:2 * d] + b_in[d:2 * d]
            v = x @ w_in[:, 2 * d:] + b_in[2 * d:]
            h = nn.Dense(d, name="out_proj")(attend(q, k, v, self.cfg.num_attention_heads))
            h = h + MLP(self.cfg, name="mlp")(nn.LayerNorm(self.cfg.layer_norm_eps, name="layernorm")(h))
            return h[:, 0]

    class SiglipVision(nn.Module):
        """NHWC images normalised with mean = std = 0.5 -> pooler_output (B, hidden)."""

        cfg: SiglipVisionConfig

        @nn.compact
        def __call__(self, images):
            c = self.cfg
            x = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size), strides=c.patch_size,
                        padding="VALID", name="patch_embedding")(images)
            x = x.reshape(x.shape[0], -1, c.hidden_size)  # row-major patches, as torch flatten(2)
            pos = self.param("position_embedding", nn.initializers.normal(0.02),
                             ((c.image_size // c.patch_size) ** 2, c.hidden_size))
            x = x + pos.astype(x.dtype)
            for i in range(c.num_hidden_layers):
                x = EncoderLayer(c, name=f"layers_{i}")(x)
            x = nn.LayerNorm(c.layer_norm_eps, name="post_layernorm")(x)
            return PoolingHead(c, name="head")(x)

    return SiglipVision


def convert_state_dict(sd: dict[str, np.ndarray], cfg: SiglipVisionConfig) -> dict:
    """HF SigLIP state dict (numpy) -> Flax params, every key mapped explicitly.

    Accepts full ``SiglipModel`` / ``SiglipVisionModel`` keys (``vision_model.`` prefix,
    text tower and logit scale/bias ignored) or bare vision keys without the prefix.
    Missing keys, wrong shapes and leftover vision keys raise ``ValueError``.
    """
    prefix = "vision_model."
    if any(k.startswith(prefix) for k in sd):
        vision = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    else:
        vision = {k: v for k, v in sd.items()
                  if not k.startswith("text_model.") and k not in ("logit_scale", "logit_bias")}
    d, p, c = cfg.hidden_size, cfg.patch_size, cfg.num_channels
    inter, n_pos = cfg.intermediate_size, (cfg.image_size // cfg.patch_size) ** 2
    used: set[str] = set()
    problems: list[str] = []
    params: dict = {}

    def take(key, shape):
        full = prefix + key
        if key not in vision:
            problems.append(f"missing parameter {full} (expected shape {shape})")
            return np.zeros(shape, np.float32)
        used.add(key)
        v = np.asarray(vision[key], np.float32)
        if v.shape != shape:
            problems.append(f"parameter {full}: checkpoint shape {v.shape}, model expects {shape}")
            return np.zeros(shape, np.float32)
        return v

    def put(path, value):
        t = params
        for q in path[:-1]:
            t = t.setdefault(q, {})
        t[path[-1]] = value

    def dense(path, key, din, dout):
        put(path + ("kernel",), take(key + ".weight", (dout, din)).T)
        put(path + ("bias",), take(key + ".bias", (dout,)))

    def layernorm(path, key):
        put(path + ("scale",), take(key + ".weight", (d,)))
        put(path + ("bias",), take(key + ".bias", (d,)))

    def mlp(path, key):
        dense(path + ("fc1",), key + ".fc1", d, inter)
        dense(path + ("fc2",), key + ".fc2", inter, d)

    put(("patch_embedding", "kernel"),
        take("embeddings.patch_embedding.weight", (d, c, p, p)).transpose(2, 3, 1, 0))
    put(("patch_embedding", "bias"), take("embeddings.patch_embedding.bias", (d,)))
    put(("position_embedding",), take("embeddings.position_embedding.weight", (n_pos, d)))
    for i in range(cfg.num_hidden_layers):
        src, dst = f"encoder.layers.{i}", (f"layers_{i}",)
        layernorm(dst + ("layer_norm1",), src + ".layer_norm1")
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            dense(dst + ("self_attn", n), f"{src}.self_attn.{n}", d, d)
        layernorm(dst + ("layer_norm2",), src + ".layer_norm2")
        mlp(dst + ("mlp",), src + ".mlp")
    layernorm(("post_layernorm",), "post_layernorm")
    put(("head", "probe"), take("head.probe", (1, 1, d)))
    put(("head", "in_proj_kernel"), take("head.attention.in_proj_weight", (3 * d, d)).T)
    put(("head", "in_proj_bias"), take("head.attention.in_proj_bias", (3 * d,)))
    dense(("head", "out_proj"), "head.attention.out_proj", d, d)
    layernorm(("head", "layernorm"), "head.layernorm")
    mlp(("head", "mlp"), "head.mlp")

    leftover = sorted(k for k in vision if k not in used)
    problems += [f"unexpected parameter {prefix}{k} (shape {tuple(vision[k].shape)})"
                 for k in leftover]
    if problems:
        raise ValueError("siglip: checkpoint does not match the model:\n  " + "\n  ".join(problems))
    return params


def accept_safetensors(path: Path):
    """A dir holding model.safetensors, or a .safetensors file itself."""
    if path.is_file() and path.name.endswith(".safetensors"):
        return path
    if path.is_dir() and (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    return None


def read_config(weights: Path, variant: str | None, cls_from_dict, presets: dict, name: str):
    """config.json beside the weights wins; else the named preset; else fail."""
    cfg_path = weights.parent / "config.json"
    if cfg_path.is_file():
        try:
            with open(cfg_path) as f:
                return cls_from_dict(json.load(f)), [cfg_path]
        except (ValueError, TypeError, AttributeError) as e:  # not JSON, or not an object
            raise core.unreadable(cfg_path, "JSON config", e) from e
    if variant in presets:
        return presets[variant], []
    raise ValueError(f"{name}: no config.json next to {weights} and variant {variant!r} is not "
                     f"a preset (allowed: {sorted(presets)})")


def locate(checkpoint=None, variant=None) -> Path:
    """The weights file `load` would read (nothing is read); fails as `load` does."""
    if variant is not None and variant not in PRESETS:
        raise ValueError(f"siglip: unknown variant {variant!r} (allowed: {sorted(PRESETS)})")
    return core.find_checkpoint("siglip", checkpoint, variant or DEFAULT_VARIANT,
                                accept_safetensors)


def load(checkpoint=None, variant=None, dtype="float32", attention: str | None = None) -> core.Encoder:
    """Load a SigLIP vision tower from a local HF checkpoint (no hub access).

    attention: `jax.nn.dot_product_attention`'s implementation (see `_modules`)."""
    import jax.numpy as jnp

    if attention not in ATTENTION_IMPLS:
        raise ValueError(f"siglip: attention={attention!r}; allowed: {ATTENTION_IMPLS}")
    weights = locate(checkpoint, variant)
    cfg, cfg_files = read_config(weights, variant or DEFAULT_VARIANT, SiglipVisionConfig.from_dict,
                                 PRESETS, "siglip")
    params = convert_state_dict(core.read_safetensors(weights), cfg)
    module = _modules(attention)(cfg)

    def apply(params, images):
        return module.apply({"params": params}, images)

    return core.Encoder(
        name="siglip", dim=cfg.hidden_size, image_size=cfg.image_size,
        mean=core.SIGLIP_MEAN, std=core.SIGLIP_STD,
        params=core.cast_floating(params, jnp.dtype(dtype)), apply=apply,
        digest=core.file_digest([weights] + cfg_files), variant=variant,
        checkpoint=str(weights), dtype=dtype)
