"""Parity of our encoders with transformers' PyTorch classes on tiny random configs.

The PyTorch model's weights are written with safetensors into tmp_path and read back
through ``load_encoder``, so the loading code (key mapping, config reading) is tested too.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fastjax.encode import load_encoder  # noqa: E402
from fastjax.encode.siglip import PRESETS, SiglipVisionConfig, convert_state_dict  # noqa: E402

TOL = 1e-4
TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, patch_size=4, image_size=16)


def _save(model, directory, state_dict=None, config=None):
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(directory / "model.safetensors"))
    (config or model.config).to_json_file(str(directory / "config.json"))
    return directory


def _pixels(n=3, size=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def _torch_out(model, x, attr="pooler_output"):
    with torch.no_grad():
        out = getattr(model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), attr)
    return out.reshape(out.shape[0], -1).numpy()


def _ours(enc, x):
    import jax

    return np.asarray(jax.jit(enc.apply)(enc.params, x))


def _randomise(model):
    # Non-trivial layer norms / batch norms / probe, so a mis-mapped key shows.
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "layernorm.weight", "norm.weight")):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.uniform_(-0.1, 0.1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


# ---------------------------------------------------------------- SigLIP

def _tiny_siglip():
    from transformers import SiglipVisionConfig as HFConfig
    from transformers import SiglipVisionModel

    torch.manual_seed(0)
    return _randomise(SiglipVisionModel(HFConfig(**TINY_VIT)))


def test_siglip_parity_vision_model(tmp_path):
    model = _tiny_siglip()
    enc = load_encoder("siglip", checkpoint=_save(model, tmp_path / "siglip"))
    x = _pixels()
    err = np.abs(_ours(enc, x) - _torch_out(model, x)).max()
    print(f"siglip pooler_output max abs diff {err:.3g}")
    assert enc.dim == 32 and enc.image_size == 16 and enc.mean == (0.5, 0.5, 0.5)
    assert err < TOL


def test_siglip_full_model_checkpoint_and_bf16(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    cfg = SiglipConfig(vision_config=TINY_VIT,
                       text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, vocab_size=50))
    full = _randomise(SiglipModel(cfg))
    path = _save(full, tmp_path / "full")
    enc = load_encoder("siglip", checkpoint=path / "model.safetensors")
    x = _pixels()
    want = _torch_out(full.vision_model, x)
    assert np.abs(_ours(enc, x) - want).max() < TOL
    enc16 = load_encoder("siglip", checkpoint=path, dtype="bfloat16")
    got16 = _ours(enc16, x.astype("bfloat16")).astype(np.float32)
    assert np.abs(got16 - want).max() < 0.1 * np.abs(want).max()


def test_siglip_key_and_shape_errors():
    model = _tiny_siglip()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg = SiglipVisionConfig(**TINY_VIT)
    convert_state_dict(sd, cfg)  # sanity: the clean dict converts

    missing = {k: v for k, v in sd.items() if k != "vision_model.head.probe"}
    with pytest.raises(ValueError, match=r"missing parameter vision_model\.head\.probe.*\(1, 1, 32\)"):
        convert_state_dict(missing, cfg)

    wrong = dict(sd, **{"vision_model.encoder.layers.1.mlp.fc1.weight": np.zeros((65, 32), np.float32)})
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.fc1\.weight: checkpoint shape \(65, 32\), "
                                         r"model expects \(64, 32\)"):
        convert_state_dict(wrong, cfg)

    extra = dict(sd, **{"vision_model.encoder.layers.2.layer_norm1.weight": np.zeros(32, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected parameter vision_model\.encoder\.layers\.2"):
        convert_state_dict(extra, cfg)

    # Bare (unprefixed) vision keys and ignored text-tower keys are accepted.
    bare = {k[len("vision_model."):]: v for k, v in sd.items()}
    bare["logit_scale"] = np.zeros(1, np.float32)
    convert_state_dict(bare, cfg)


def test_siglip_presets_and_config_without_json(tmp_path, monkeypatch):
    assert {"base-patch16-224", "base-patch16-256", "base-patch16-384", "base-patch16-512",
            "large-patch16-256", "large-patch16-384"} <= set(PRESETS)
    assert PRESETS["large-patch16-384"].hidden_size == 1024
    # A preset supplies the sizes when a checkpoint dir has no config.json.
    model = _tiny_siglip()
    d = _save(model, tmp_path / "w" / "siglip" / "base-patch16-224")
    (d / "config.json").unlink()
    monkeypatch.setenv("FASTJAX_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(ValueError, match=r"embeddings\.patch_embedding\.weight: checkpoint shape "
                                         r"\(32, 3, 4, 4\), model expects \(768, 3, 16, 16\)"):
        load_encoder("siglip", variant="base-patch16-224")
    with pytest.raises(ValueError, match="allowed"):
        load_encoder("siglip", variant="huge-patch99")


# ---------------------------------------------------------------- CLIP / DINOv2 / ResNet

def test_clip_parity_pooler_and_image_embeds(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    vision = _randomise(CLIPVisionModel(CLIPVisionConfig(**TINY_VIT)))
    enc = load_encoder("clip", checkpoint=_save(vision, tmp_path / "clipv"))
    x = _pixels()
    err = np.abs(_ours(enc, x) - _torch_out(vision, x)).max()
    print(f"clip pooler_output max abs diff {err:.3g}")
    assert err < TOL and enc.mean[0] == pytest.approx(0.48145466)

    full = _randomise(CLIPModel(CLIPConfig(
        vision_config=TINY_VIT, projection_dim=24,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, vocab_size=50))))
    enc = load_encoder("clip", checkpoint=_save(full, tmp_path / "clip"), output="image_embeds")
    with torch.no_grad():
        want = full.get_image_features(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    err = np.abs(_ours(enc, x) - want.numpy()).max()
    print(f"clip image_embeds max abs diff {err:.3g}")
    assert enc.dim == 24 and err < TOL


def test_dinov2_parity(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = _randomise(Dinov2Model(Dinov2Config(**TINY_VIT)))
    enc = load_encoder("dinov2", checkpoint=_save(model, tmp_path / "dino"), image_size=16)
    x = _pixels()
    err = np.abs(_ours(enc, x) - _torch_out(model, x)).max()
    print(f"dinov2 pooler_output max abs diff {err:.3g}")
    assert err < TOL and enc.dim == 32


def test_resnet_parity(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1],
                       layer_type="bottleneck", num_labels=5)
    # microsoft/resnet-50 is a ResNetForImageClassification checkpoint ("resnet." prefix).
    model = _randomise(ResNetForImageClassification(cfg))
    enc = load_encoder("resnet50", checkpoint=_save(model, tmp_path / "resnet"))
    x = _pixels(size=32)
    err = np.abs(_ours(enc, x) - _torch_out(model.resnet, x)).max()
    print(f"resnet pooler_output max abs diff {err:.3g}")
    assert err < TOL and enc.dim == 32 and enc.image_size == 224


def test_hf_loader_rejects_mismatched_checkpoint(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY_VIT))
    d = _save(model, tmp_path / "clip")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="fc1"):
        load_encoder("clip", checkpoint=d)


def _flax_random(cls, cfg, seed):
    # transformers' own init runs op by op (~25 s here); jit it instead.
    import jax

    model = cls(cfg, _do_init=False)
    params = jax.jit(lambda rng: model.init_weights(rng, model.input_shape))(jax.random.PRNGKey(seed))
    return model, params


@pytest.mark.slow  # ~35 s on 2 cores: building transformers' Flax models is slow
def test_flax_msgpack_checkpoints(tmp_path):
    """flax_model.msgpack (transformers' Flax save_pretrained layout) loads too."""
    from transformers import (CLIPConfig, FlaxCLIPModel, FlaxResNetForImageClassification,
                              ResNetConfig)
    from transformers.models.resnet.modeling_flax_resnet import FlaxResNetModule

    cfg = CLIPConfig(vision_config=TINY_VIT, projection_dim=24,
                     text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, vocab_size=50))
    flax_clip, params = _flax_random(FlaxCLIPModel, cfg, 3)
    flax_clip.save_pretrained(str(tmp_path / "clip"), params=params)
    x = _pixels()
    want = np.asarray(flax_clip.get_image_features(x.transpose(0, 3, 1, 2), params=params))
    enc = load_encoder("clip", checkpoint=tmp_path / "clip", output="image_embeds")
    assert np.abs(_ours(enc, x) - want).max() < TOL

    rcfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                        layer_type="bottleneck", num_labels=5)
    flax_resnet, params = _flax_random(FlaxResNetForImageClassification, rcfg, 4)
    flax_resnet.save_pretrained(str(tmp_path / "resnet"), params=params)
    enc = load_encoder("resnet50", checkpoint=tmp_path / "resnet")
    x = _pixels(size=32)
    want = FlaxResNetModule(rcfg).apply(
        {"params": params["params"]["resnet"], "batch_stats": params["batch_stats"]["resnet"]},
        x, deterministic=True).pooler_output.reshape(3, -1)
    assert np.abs(_ours(enc, x) - np.asarray(want)).max() < TOL
