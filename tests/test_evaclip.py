"""Parity of the Flax EVA-CLIP tower with timm's PyTorch ``Eva`` (timm/models/eva.py).

timm builds the reference with random weights; they are written in the hub formats the
real checkpoints use (timm's own ``save_for_hf``: config.json + model.safetensors; and
open_clip's whole-model layout, float16, keys under ``visual.trunk.``) and read back
through ``load_encoder``, so the key mapping and config reading are tested too.
Measured max abs differences (float32, this project's 2-core CPU): 7e-7 on the tiny
config (outputs up to 3.7), 4e-5 on the full B/16 shape (outputs up to 17; timm's float32
output itself differs from its float64 run by 2e-5 there).
"""

import dataclasses
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed (see .ci/setup: installed with --no-deps)",
                allow_module_level=True)

from fastjax.encode import check_weights, load_encoder  # noqa: E402
from fastjax.encode.evaclip import (  # noqa: E402
    PRESETS, EvaClipVisionConfig, config_from_open_clip, config_from_timm, convert_state_dict,
    rope_tables)

TOL = 1e-4
ARCH = "eva02_base_patch16_clip_224"
# 2 heads of 16 channels (4 rotary bands per axis), a 4 x 4 grid rescaled to the 16 x 16
# reference grid, SwiGLU hidden int(32 * 8 / 3) = 85.
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=16)


class _Inert(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert(name, (), {})


class _InertModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert(name, (), {"__init__": lambda self, *a, **k: None})


class _InertTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == "torchvision":
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _InertModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


@pytest.fixture(scope="module")
def timm():
    """timm imports torchvision at import time (data transforms, FrozenBatchNorm2d); EVA's
    forward never calls it. PyPI has no CPU torchvision for torch 2.13.0 (its 0.28 wheel is
    a CUDA build that fails to load beside the CPU torch, and resolving it upgrades torch),
    so where none is installed an inert stand-in serves timm's import and is removed again."""
    if importlib.util.find_spec("torchvision") is not None:
        import timm as lib

        return lib
    finder = _InertTorchvision()
    sys.meta_path.insert(0, finder)
    try:
        import timm as lib
        import timm.models._hub  # noqa: F401  (save_for_hf)
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
            del sys.modules[name]
    return lib


def _randomise(model, seed=1):
    # Non-trivial norms, biases and head (timm scales its head init by 1e-3).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5, generator=g)
            elif name.endswith("bias"):
                p.uniform_(-0.1, 0.1, generator=g)
            elif name == "head.weight":
                p.normal_(0.0, 0.2, generator=g)
    return model.eval()


def _tiny(timm):
    torch.manual_seed(0)
    return _randomise(timm.create_model(ARCH, pretrained=False, **TINY))


def _save(model, directory):
    from timm.models._hub import save_for_hf

    save_for_hf(model, str(directory), safe_serialization=True)
    return directory


def _pixels(n=3, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def _torch_out(model, x, pre_logits=False):
    with torch.no_grad():
        t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        return model.forward_head(model.forward_features(t), pre_logits=pre_logits).numpy()


def _ours(enc, x):
    import jax

    return np.asarray(jax.jit(enc.apply)(enc.params, x))


def test_evaclip_parity_tiny_timm_format(tmp_path, timm):
    model = _tiny(timm)
    path = _save(model, tmp_path / "evaclip")
    x = _pixels()
    enc = load_encoder("evaclip", checkpoint=path)
    want = _torch_out(model, x)
    err = np.abs(_ours(enc, x) - want).max()
    print(f"evaclip image_embeds max abs diff {err:.3g} (max |z| {np.abs(want).max():.3g})")
    assert (enc.dim, enc.image_size, enc.mean) == (16, 32, (0.48145466, 0.4578275, 0.40821073))
    assert err < TOL

    pooled = load_encoder("evaclip", checkpoint=path / "model.safetensors", output="pooler_output")
    want = _torch_out(model, x, pre_logits=True)
    assert pooled.dim == 32 and pooled.note == "output=pooler_output"
    assert np.abs(_ours(pooled, x) - want).max() < TOL

    enc16 = load_encoder("evaclip", checkpoint=path, dtype="bfloat16")
    got16 = _ours(enc16, x.astype("bfloat16")).astype(np.float32)
    want = _torch_out(model, x)
    assert np.abs(got16 - want).max() < 0.1 * np.abs(want).max()


def test_evaclip_b16_shape_from_open_clip_layout(tmp_path, timm):
    """The real EVA02-CLIP-B/16 shapes, stored as open_clip's hub files hold them: the whole
    CLIP model in float16, the tower under visual.trunk., beside open_clip_config.json."""
    from safetensors.torch import save_file

    # Built on the meta device and filled directly: timm's own init takes ~10 s here.
    model = timm.create_model(ARCH, pretrained=False, device="meta").to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    for m in model.modules():
        if m is not model and hasattr(m, "init_non_persistent_buffers"):
            m.init_non_persistent_buffers()  # the rotary tables
    model = _randomise(model)
    with torch.no_grad():  # the float16 values the file will hold (the rotary tables stay float32)
        for p in model.parameters():
            p.copy_(p.half().float())

    sd = {f"visual.trunk.{k}": v.half() for k, v in model.state_dict().items()}
    sd.update({"text.token_embedding.weight": torch.zeros(8, 4, dtype=torch.float16),
               "logit_scale": torch.zeros((), dtype=torch.float16)})
    d = tmp_path / "EVA02-B-16"
    d.mkdir()
    save_file(sd, str(d / "open_clip_model.safetensors"))
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 512, "vision_cfg": {"image_size": 224, "timm_model_name": ARCH,
                                         "timm_model_pretrained": False, "timm_pool": "token",
                                         "timm_proj": None}}}))
    enc = load_encoder("evaclip", checkpoint=d)
    assert (enc.dim, enc.image_size) == (512, 224)
    x = _pixels(n=1, size=224)
    want = _torch_out(model, x)
    err = np.abs(_ours(enc, x) - want).max()
    print(f"evaclip B/16 max abs diff {err:.3g} (max |z| {np.abs(want).max():.3g})")
    assert err < 2e-5 * np.abs(want).max()


def test_evaclip_checkpoint_errors(timm):
    model = _tiny(timm)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg = EvaClipVisionConfig(**TINY)
    convert_state_dict(sd, cfg)  # sanity: the clean dict converts

    missing = {k: v for k, v in sd.items() if k != "blocks.1.attn.norm.weight"}
    with pytest.raises(ValueError, match=r"missing parameter blocks\.1\.attn\.norm\.weight .*32"):
        convert_state_dict(missing, cfg)
    wrong = dict(sd, **{"blocks.0.mlp.fc1_g.weight": np.zeros((86, 32), np.float32)})
    with pytest.raises(ValueError, match=r"fc1_g\.weight: checkpoint shape \(86, 32\), "
                                         r"model expects \(85, 32\)"):
        convert_state_dict(wrong, cfg)
    extra = dict(sd, **{"blocks.0.attn.k_proj.bias": np.zeros(32, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected parameter blocks\.0\.attn\.k_proj\.bias"):
        convert_state_dict(extra, cfg)
    # open_clip layout: the text side is ignored, a stray visual.* key is not.
    oc = {f"visual.trunk.{k}": v for k, v in sd.items()}
    convert_state_dict(dict(oc, logit_scale=np.zeros(()), **{"text.proj": np.zeros(2)}), cfg)
    with pytest.raises(ValueError, match=r"unexpected parameter visual\.proj "):
        convert_state_dict(dict(oc, **{"visual.proj": np.zeros((32, 8))}), cfg)
    # No head: image_embeds is impossible, pooler_output is fine.
    no_head = {k: v for k, v in sd.items() if not k.startswith("head.")}
    convert_state_dict(no_head, cfg, project=False)
    with pytest.raises(ValueError, match="pooler_output"):
        convert_state_dict(no_head, dataclasses.replace(cfg, num_classes=0))

    base = {"architecture": ARCH, "model_args": {"depth": 2}}
    assert config_from_timm(base) == dataclasses.replace(PRESETS["base-patch16-224"], depth=2)
    with pytest.raises(ValueError, match=r"\['qkv_fused'\] change the EVA02-CLIP structure"):
        config_from_timm({**base, "model_args": {"qkv_fused": True}})
    with pytest.raises(ValueError, match=r"\['global_pool'\]"):
        config_from_timm({**base, "global_pool": "avg"})
    with pytest.raises(ValueError, match="not an EVA02-CLIP vision tower"):
        config_from_timm({"architecture": "vit_base_patch16_224"})
    with pytest.raises(ValueError, match="non-square"):
        config_from_timm({**base, "model_args": {"img_size": [224, 256]}})
    with pytest.raises(ValueError, match="multiple"):
        config_from_timm({**base, "model_args": {"num_heads": 5}})  # 768 / 5
    oc_cfg = {"embed_dim": 512, "vision_cfg": {"timm_model_name": ARCH, "timm_pool": "token",
                                               "timm_proj": "none"}}
    assert config_from_open_clip(oc_cfg).num_classes == 0  # no head: the trunk's features


def test_evaclip_presets_lookup_and_options(tmp_path, monkeypatch, timm):
    # A preset supplies the sizes when the directory has no config; the default is L/14.
    d = _save(_tiny(timm), tmp_path / "w" / "evaclip" / "large-patch14-224")
    (d / "config.json").unlink()
    monkeypatch.setenv("FASTJAX_WEIGHTS", str(tmp_path / "w"))
    assert check_weights("evaclip") == d / "model.safetensors"
    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight: checkpoint shape "
                                         r"\(32, 3, 8, 8\), model expects \(1024, 3, 14, 14\)"):
        load_encoder("evaclip")
    with pytest.raises(ValueError, match="allowed"):
        load_encoder("evaclip", variant="huge-patch99")
    with pytest.raises(ValueError, match="output="):
        load_encoder("evaclip", checkpoint=d, output="logits")
    monkeypatch.delenv("FASTJAX_WEIGHTS")
    with pytest.raises(FileNotFoundError, match="encoder.checkpoint"):
        load_encoder("evaclip", checkpoint=tmp_path / "w" / "evaclip" / "nothing-here")


def test_rope_tables_hand_case():
    # 2 x 2 grid, head_dim 4: one band (frequency 1) per axis; rows/cols 0, 1 -> 0, 2 on a
    # 4 x 4 reference grid; each angle fills a rotated pair: (row, row, col, col).
    cfg = EvaClipVisionConfig(img_size=2, patch_size=1, embed_dim=4, depth=1, num_heads=1,
                              ref_feat_shape=(4, 4))
    sin, cos = rope_tables(cfg)
    angles = np.array([[0, 0, 0, 0], [0, 0, 2, 2], [2, 2, 0, 0], [2, 2, 2, 2]], np.float64)
    np.testing.assert_allclose(sin, np.sin(angles), atol=1e-7)
    np.testing.assert_allclose(cos, np.cos(angles), atol=1e-7)
    assert PRESETS["large-patch14-224"].mlp_hidden == 2730  # int(1024 * 8 / 3), as timm
    assert PRESETS["base-patch16-224"].mlp_hidden == 2048
