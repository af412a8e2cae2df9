"""CLIP, DINOv2 and ResNet-50 through transformers' Flax classes (4.57.x), offline.

transformers is imported lazily. Weights come from a local directory: ``config.json``
plus ``model.safetensors`` (PyTorch layout, converted here without torch) or
``flax_model.msgpack``. We never call ``from_pretrained`` with a hub id: the module is
built from the config and the converted parameters are checked key by key against its
abstract shapes (``jax.eval_shape``; no random init).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fastjax.encode import core


def locate(name: str, checkpoint=None, variant=None) -> Path:
    """The weights file ``load_<name>`` would read, with its config.json beside it.

    Nothing is read; fails as the loaders do (`FileNotFoundError` naming the places).
    """
    weights = core.find_checkpoint(name, checkpoint, variant, _accept)
    if not (weights.parent / "config.json").is_file():
        raise FileNotFoundError(f"no config.json next to {weights}: copy it from the checkpoint "
                                f"(set `encoder.checkpoint` to the whole directory)")
    return weights


def _accept(path: Path):
    if path.is_file() and path.name.endswith((".safetensors", ".msgpack")):
        return path
    if path.is_dir():
        for name in ("model.safetensors", "flax_model.msgpack"):
            if (path / name).is_file():
                return path / name
    return None


def _flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(_flat(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflat(flat):
    tree: dict = {}
    for path, v in flat.items():
        t = tree
        for p in path[:-1]:
            t = t.setdefault(p, {})
        t[path[-1]] = v
    return tree


class _AbstractModel:
    """What ``convert_pytorch_state_dict_to_flax`` reads from a Flax model: shapes only."""

    def __init__(self, base_model_prefix, params):
        self.base_model_prefix = base_model_prefix
        self.params = params


def _load_variables(weights: Path, module, base_prefix: str, dummy, drop_prefixes=()):
    """Read + convert + strictly check. Returns (variables, extra numpy tensors)."""
    import jax
    from flax.serialization import msgpack_restore

    abstract = jax.eval_shape(lambda: module.init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, dummy))
    abstract = dict(abstract)
    has_stats = "batch_stats" in abstract
    if weights.name.endswith(".msgpack"):
        try:
            with open(weights, "rb") as f:
                state = msgpack_restore(f.read())
            if not isinstance(state, dict):
                raise TypeError(f"it holds a {type(state).__name__}, not a parameter tree")
        except Exception as e:  # msgpack raises its own types on bad bytes
            raise core.unreadable(weights, "Flax msgpack", e) from e
        params = state.get("params", state) if has_stats else state
        if base_prefix in params and base_prefix not in abstract["params"]:
            params = params[base_prefix]  # a checkpoint of the model with a head
        # Top-level entries the module lacks (heads, a text tower) go to `extra`.
        extra = {".".join(k): np.asarray(v) for k, v in _flat(params).items()
                 if k[0] not in abstract["params"]}
        params = {k: v for k, v in params.items() if k in abstract["params"]}
        variables = {"params": params}
        if has_stats:
            stats = state.get("batch_stats", {})
            variables["batch_stats"] = stats.get(base_prefix, stats) \
                if base_prefix not in abstract["batch_stats"] else stats
    else:
        from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

        sd = core.read_safetensors(weights)
        extra = {k: v for k, v in sd.items() if k.startswith(drop_prefixes)}
        sd = {k: v for k, v in sd.items() if not k.startswith(drop_prefixes)}
        shim = _AbstractModel(base_prefix, abstract if has_stats else abstract["params"])
        converted = convert_pytorch_state_dict_to_flax(sd, shim)
        variables = converted if has_stats else {"params": converted}
    expected = {"/".join(k): tuple(v.shape) for k, v in _flat(abstract).items()}
    got = {"/".join(k): tuple(np.shape(v)) for k, v in _flat(variables).items()}
    core.check_params(expected, got, module.__class__.__name__)
    variables = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), variables)
    return variables, extra


def _config(weights: Path, config_cls, sub: str | None):
    path = weights.parent / "config.json"  # present: `locate` checked
    try:
        with open(path) as f:
            d = json.load(f)
        if not isinstance(d, dict):
            raise TypeError(f"it holds a {type(d).__name__}, not an object")
    except (ValueError, TypeError) as e:
        raise core.unreadable(path, "JSON config", e) from e
    if sub and sub in d:
        d = d[sub]
    d.pop("model_type", None)
    return config_cls(**d), path


def load_clip(checkpoint=None, variant=None, dtype="float32", output="pooler_output"):
    """CLIP vision tower: ``pooler_output`` (post-LN CLS) or ``image_embeds`` (projected)."""
    import jax.numpy as jnp

    if output not in ("pooler_output", "image_embeds"):
        raise ValueError(f"clip: output={output!r}; allowed: 'pooler_output', 'image_embeds'")
    weights = locate("clip", checkpoint, variant)
    # transformers is slow to import: only once weights are known to exist.
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_flax_clip import FlaxCLIPVisionModule
    cfg, cfg_path = _config(weights, CLIPVisionConfig, "vision_config")
    module = FlaxCLIPVisionModule(cfg, dtype=jnp.float32)
    dummy = np.zeros((1, cfg.image_size, cfg.image_size, 3), np.float32)
    # A full CLIPModel checkpoint also holds the text tower; keep the vision side.
    drop = ("text_model.", "text_projection.", "logit_scale", "visual_projection.")
    variables, extra = _load_variables(weights, module, "", dummy, drop)
    dim = cfg.hidden_size
    if output == "image_embeds" and "visual_projection.kernel" in extra:  # Flax msgpack
        variables["visual_projection"] = np.asarray(extra["visual_projection.kernel"], np.float32)
        dim = variables["visual_projection"].shape[1]
    elif output == "image_embeds":
        if "visual_projection.weight" not in extra:
            raise ValueError(f"clip: output='image_embeds' needs visual_projection.weight, "
                             f"absent from {weights} (a CLIPVisionModel checkpoint?)")
        variables["visual_projection"] = np.asarray(extra["visual_projection.weight"], np.float32).T
        dim = variables["visual_projection"].shape[1]

    def apply(variables, images):
        m = FlaxCLIPVisionModule(cfg, dtype=images.dtype)
        out = m.apply({"params": variables["params"]}, images, deterministic=True).pooler_output
        if output == "image_embeds":
            out = out @ variables["visual_projection"]
        return out

    return core.Encoder(
        name="clip", dim=dim, image_size=cfg.image_size, mean=core.CLIP_MEAN, std=core.CLIP_STD,
        params=core.cast_floating(variables, jnp.dtype(dtype)), apply=apply,
        digest=core.file_digest([weights, cfg_path]), variant=variant,
        checkpoint=str(weights), dtype=dtype, note=f"output={output}")


def load_dinov2(checkpoint=None, variant=None, dtype="float32", image_size=224):
    """DINOv2 CLS token after the final layernorm (``pooler_output``).

    At an ``image_size`` other than the config's, position embeddings are interpolated
    by transformers' Flax code (JAX bicubic; close to, not bit-equal with, PyTorch).
    """
    import jax.numpy as jnp

    weights = locate("dinov2", checkpoint, variant)
    # transformers is slow to import: only once weights are known to exist.
    from transformers import Dinov2Config
    from transformers.models.dinov2.modeling_flax_dinov2 import FlaxDinov2Module
    cfg, cfg_path = _config(weights, Dinov2Config, None)
    module = FlaxDinov2Module(cfg, dtype=jnp.float32)
    dummy = np.zeros((1, cfg.image_size, cfg.image_size, 3), np.float32)
    variables, _ = _load_variables(weights, module, "dinov2", dummy, ("classifier.",))

    def apply(variables, images):
        m = FlaxDinov2Module(cfg, dtype=images.dtype)
        return m.apply(variables, images, deterministic=True).pooler_output

    return core.Encoder(
        name="dinov2", dim=cfg.hidden_size, image_size=int(image_size or cfg.image_size),
        mean=core.IMAGENET_MEAN, std=core.IMAGENET_STD,
        params=core.cast_floating(variables, jnp.dtype(dtype)), apply=apply,
        digest=core.file_digest([weights, cfg_path]), variant=variant,
        checkpoint=str(weights), dtype=dtype)


def load_resnet50(checkpoint=None, variant=None, dtype="float32"):
    """ResNet (microsoft/resnet-50 layout): globally pooled last-stage features (2048-d)."""
    import jax.numpy as jnp

    weights = locate("resnet50", checkpoint, variant)
    # transformers is slow to import: only once weights are known to exist.
    from transformers import ResNetConfig
    from transformers.models.resnet.modeling_flax_resnet import FlaxResNetModule
    cfg, cfg_path = _config(weights, ResNetConfig, None)
    module = FlaxResNetModule(cfg, dtype=jnp.float32)
    dummy = np.zeros((1, 224, 224, cfg.num_channels), np.float32)
    variables, _ = _load_variables(weights, module, "resnet", dummy, ("classifier.",))

    def apply(variables, images):
        m = FlaxResNetModule(cfg, dtype=images.dtype)
        out = m.apply(variables, images, deterministic=True).pooler_output
        return out.reshape(out.shape[0], -1)

    return core.Encoder(
        name="resnet50", dim=cfg.hidden_sizes[-1], image_size=224,
        mean=core.IMAGENET_MEAN, std=core.IMAGENET_STD,
        params=core.cast_floating(variables, jnp.dtype(dtype)), apply=apply,
        digest=core.file_digest([weights, cfg_path]), variant=variant,
        checkpoint=str(weights), dtype=dtype)
